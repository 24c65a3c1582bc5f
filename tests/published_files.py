"""Tiny files in exactly the published schemas, written here with pyarrow from METHOD.md (not by our writer).

    ReasonLite-42M   cc12m_tb_trl_chunk_NN.parquet: id string, image_path string, tb list<string>[3], trl list<string>[3]
    ReasonPro-16M    cc12m_trp_chunk_NN.parquet: image_path, trp string, trp_cls string (ONE letter),
                     trp_cls_ls list<string> (exactly 3 letters, repeats allowed); S=0 A=1 H=2 T=3 P=4
    CC12M-Refined    cc12m_tb_chunk_NN.parquet: image_path, tb list<string>[3]
    COCO (READ)      image_path, captions list<string>[5]

image_path is an absolute local path, as in the published files.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

LETTERS = "SAHTP"


def write_images(root: Path, count: int) -> list[str]:
    (root / "cc12m").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = root / "cc12m" / f"{i:08d}.jpg"
        Image.new("RGB", (32, 32), ((37 * i) % 256, (91 * i) % 256, (53 * i + 20) % 256)).save(path)
        paths.append(str(path))
    return paths


def lite_rows(images: list[str]) -> list[dict]:
    return [{"id": f"cc12m_{i:08d}", "image_path": p,
             "tb": [f"image {i} shows thing {j}" for j in range(3)],
             "trl": [f"image {i} reasons about {j}" for j in range(3)]} for i, p in enumerate(images)]


def pro_rows(images: list[str]) -> list[dict]:
    # Letters may repeat in trp_cls_ls (published); the caption's letter is one of them.
    labels = [("P", ["P", "P", "S"]), ("S", ["S", "A", "H"]), ("T", ["T", "H", "T"]), ("A", ["A", "A", "A"])]
    return [{"image_path": p, "trp": f"image {i} physically {i % 4}", "trp_cls": labels[i % 4][0], "trp_cls_ls": labels[i % 4][1]}
            for i, p in enumerate(images)]


def write_table(path: Path, rows: list[dict], kind: str) -> Path:
    strings = pa.list_(pa.string())
    schemas = {
        "lite": pa.schema([("id", pa.string()), ("image_path", pa.string()), ("tb", strings), ("trl", strings)]),
        "pro": pa.schema([("image_path", pa.string()), ("trp", pa.string()), ("trp_cls", pa.string()), ("trp_cls_ls", strings)]),
        "refined": pa.schema([("image_path", pa.string()), ("tb", strings)]),
        "coco": pa.schema([("image_path", pa.string()), ("captions", strings)]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas[kind]), path)
    return path


def write_published(root: Path, num_images: int = 20) -> dict[str, Path]:
    """Dirs of chunks as published (ReasonLite in two chunks), plus a COCO-style READ file."""
    images = write_images(root, num_images)
    lite = lite_rows(images)
    half = num_images // 2
    write_table(root / "CLIPReasonLite-42M" / "cc12m_tb_trl_chunk_00.parquet", lite[:half], "lite")
    write_table(root / "CLIPReasonLite-42M" / "cc12m_tb_trl_chunk_01.parquet", lite[half:], "lite")
    write_table(root / "CLIPReasonPro-16M" / "cc12m_trp_chunk_00.parquet", pro_rows(images), "pro")
    write_table(root / "CC12M-Refined" / "cc12m_tb_chunk_00.parquet",
                [{"image_path": r["image_path"], "tb": r["tb"]} for r in lite], "refined")
    write_table(root / "coco_karpathy_train.parquet",
                [{"image_path": p, "captions": [f"photo {i} caption {j}" for j in range(5)]} for i, p in enumerate(images)], "coco")
    return {"images": images, "lite": root / "CLIPReasonLite-42M", "pro": root / "CLIPReasonPro-16M",
            "refined": root / "CC12M-Refined", "coco": root / "coco_karpathy_train.parquet"}
