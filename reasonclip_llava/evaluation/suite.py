"""Whole suites for one checkpoint given a data root: every benchmark whose files are there, one report.

The data root holds each benchmark under its own folder, as released (the layouts below; the test
fixtures in tests/fixtures/{vqa,encoder} use exactly these). A JSON file passed as `layout` overrides
any entry: {"gqa": {"data": "...", "images": "...", "annotations": "..."}}, paths relative to the root.
Benchmarks whose data is absent are skipped and listed as such; nothing stops on a missing benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

# benchmark -> paths relative to the data root; "annotations" defaults to "data" (VQAv2 has its own file)
VQA_LAYOUT: dict[str, dict[str, str]] = {
    "vqav2": {"data": "vqav2/v2_OpenEnded_mscoco_val2014_questions.json", "images": "vqav2/val2014", "annotations": "vqav2/v2_mscoco_val2014_annotations.json"},
    "gqa": {"data": "gqa/testdev_balanced_questions.json", "images": "gqa/images"},
    "textvqa": {"data": "textvqa/TextVQA_0.5.1_val.json", "images": "textvqa/train_images"},
    "vizwiz": {"data": "vizwiz/val.json", "images": "vizwiz/val"},
    "pope": {"data": "pope", "images": "pope/val2014"},
    "mme": {"data": "mme/MME_Benchmark_release_version", "images": "mme/MME_Benchmark_release_version"},
    "scienceqa_img": {"data": "scienceqa", "images": "scienceqa/images/test"},
    "mmbench": {"data": "mmbench/mmbench_dev.tsv", "images": ""},  # base64 in the TSV: decoded under OUT
    "mmvp": {"data": "mmvp/Questions.csv", "images": "mmvp/MMVP Images"},
    "ai2d": {"data": "ai2d", "images": "ai2d/images"},
    "chartqa": {"data": "chartqa/test", "images": "chartqa/test/png"},
    "seedbench_img": {"data": "seedbench/SEED-Bench.json", "images": "seedbench/SEED-Bench-image"},
}

ENCODER_LAYOUT: dict[str, dict[str, str]] = {
    "sugarcrepe": {"data": "sugarcrepe", "images": "images/val2017"},
    "sugarcrepe_pp": {"data": "sugarcrepe_pp", "images": "images/val2017"},
    "whatsup": {"data": "whatsup", "images": "images"},
    "valse": {"data": "valse", "images": "images/val2017"},
    "crepe": {"data": "crepe", "images": "images/vg_images"},
    "winoground": {"data": "winoground/examples.jsonl", "images": "images/winoground"},
    "aro": {"data": "aro", "images": "images/vg_images"},
    "rclip_bench": {"data": "rclip_bench", "images": "rclip_bench"},  # images embedded in the parquet
    "rclip_bench_retrieval": {"data": "rclip_bench", "images": "rclip_bench"},
    "retrieval": {"data": "retrieval/dataset_coco.json", "images": "images"},
    "zeroshot": {"data": "zeroshot/classes.json", "images": "images/classes"},
}


def resolve_layout(defaults: dict[str, dict[str, str]], layout: str | Path | None, benchmarks: list[str] | None) -> dict[str, dict[str, str]]:
    table = {name: dict(entry) for name, entry in defaults.items()}
    if layout is not None:
        overrides = json.loads(Path(layout).read_text())
        for name, entry in overrides.items():
            table.setdefault(name, {}).update(entry)
    if benchmarks:
        unknown = [b for b in benchmarks if b not in table]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; this suite has {sorted(table)}")
        table = {name: table[name] for name in benchmarks}
    return table


def _present(root: Path, entry: dict[str, str], name: str) -> bool:
    from .lmms_lab import is_parquet_input

    embedded = name in ("mmbench", "rclip_bench", "rclip_bench_retrieval") or is_parquet_input(root / entry["data"])  # images in the data
    needed = ["data"] + ([] if embedded else ["images"])
    return all((root / entry[key]).exists() for key in needed)


def _run_suite(
    kind: str,
    data_root: str | Path,
    out_dir: str | Path,
    table: dict[str, dict[str, str]],
    run_one: Callable[[str, Path, Path, Path | None, Path], Path],
    model_name: str,
) -> dict[str, Any]:
    from .report import write_report

    root, out = Path(data_root), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done, skipped = {}, []
    for name, entry in table.items():
        if not _present(root, entry, name):
            skipped.append(name)
            print(f"[{kind} suite] {name}: data not under {root}, skipped", flush=True)
            continue
        annotations = root / entry["annotations"] if "annotations" in entry else None
        done[name] = str(run_one(name, root / entry["data"], root / entry["images"], annotations, out))
        print(f"[{kind} suite] {name}: {done[name]}", flush=True)
    report = write_report([f"{model_name}={out}"], out, title=f"{model_name}: {kind} suite") if done else None
    summary = {"model": model_name, "kind": kind, "results": done, "skipped": skipped, "report": [str(p) for p in report] if report else None}
    (out / f"{kind}_suite.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_vqa_suite(
    model_dir: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    *,
    benchmarks: list[str] | None = None,
    layout: str | Path | None = None,
    limit: int | None = None,
    mode: str = "official",
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """Answer and score every VQA benchmark present under `data_root`; write answers, scores, a report."""
    from .generate import model_name_from_path, run_vqa
    from .scoring import score_answers

    def run_one(name: str, data: Path, images: Path, annotations: Path | None, out: Path) -> Path:
        from .lmms_lab import is_parquet_input

        parquet = is_parquet_input(data)
        if name == "mmbench" or parquet:
            images = out / f"{name}_images"  # embedded images are written here, never into the data root
        # lmms_eval: lmms-eval's prompts and generation settings where its data (the lmms-lab parquet) is there
        prompts = "lmms_eval" if mode == "lmms_eval" and parquet else "llava"
        answers = run_vqa(model_dir, name, data, images, out / f"{name}_answers.jsonl", limit=limit, prompts=prompts,
                          **generate_kwargs)
        # a --limit run is scored on the answered questions only
        questions = answers if limit is not None else None
        from .scoring.lmms_eval import COVERED

        vqa_family = ("vqav2", "textvqa", "vizwiz", "gqa")
        if mode == "lmms_eval":  # lmms-eval's functions read the lmms-lab rows; release files keep their official scorer
            score_mode = mode if name in COVERED and parquet else "official"
        else:
            score_mode = mode if name in vqa_family else "official"
        score_answers(name, answers, annotations or data, questions=questions, mode=score_mode, out_dir=out)
        return out / f"{name}_summary.json"

    table = resolve_layout(VQA_LAYOUT, layout, benchmarks)
    return _run_suite("vqa", data_root, out_dir, table, run_one, model_name_from_path(model_dir))


def run_encoder_suite(
    model_dir: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    *,
    benchmarks: list[str] | None = None,
    layout: str | Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """Every encoder benchmark present under `data_root`, sharing one embedding cache."""
    from .encoder import EncoderEmbedder, evaluate_encoder

    embedder = EncoderEmbedder.from_pretrained(model_dir, batch_size=batch_size, device=device)
    model_name = Path(model_dir).name

    def run_one(name: str, data: Path, images: Path, annotations: Path | None, out: Path) -> Path:
        result = evaluate_encoder(model_dir, name, data, images, out_dir=out, batch_size=batch_size, device=device, model_name=model_name, embedder=embedder)
        return Path(result.get("path") or out / f"{name}.json")

    table = resolve_layout(ENCODER_LAYOUT, layout, benchmarks)
    return _run_suite("encoder", data_root, out_dir, table, run_one, model_name)
