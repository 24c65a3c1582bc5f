"""Webdataset tar shards (img2dataset layout), streamed per rank and DataLoader worker, resumable.

Layout of a shard: per sample ``<key>.jpg`` (or .jpeg / .png / .webp), ``<key>.json`` with the
caption fields of the schema (ReasonLite ``tb``/``trl``; ReasonPro ``trp``/``trp_cls``; READ the
caption columns) and optionally ``<key>.txt`` (img2dataset's caption; used as field ``caption`` when
the json has none). ``write_wds_shards`` converts a parquet / JSONL file + images into this layout.

Splitting: each epoch the shard list is shuffled by (seed, epoch); rank r takes shards r, r + W, ...
and worker w of that rank takes every num_workers-th of those. Every sample of the epoch is read by
exactly one (rank, worker). With fewer shards than ranks x workers some workers get nothing, and
ranks get unequal sample counts when shards differ in size: write shards of equal size and at least
ranks x workers of them.

Resume granularity: exact sample. A batch is built inside one worker; the trainer passes each batch
to ``dataset.advance(batch)``, which counts positions per worker (``batch["worker_id"]``,
``batch["num_drawn"]``, skipped images included). ``state_dict()`` = {epoch, num_workers, world_size,
batches, consumed per worker}. After ``load_state_dict`` each worker skips its consumed count: whole
shards when ``shard_sizes`` (samples per shard) is given, otherwise by reading past the samples
without decoding them. The workers are rotated so the DataLoader's round-robin continues with the
worker whose turn it was: the resumed run yields the same batches in the same order as an
uninterrupted one (while no worker had run out of shards at the checkpoint; after that, the same
remaining samples in a different batch order). Resuming needs the same world size and number of
workers (checked), and ``persistent_workers`` off, because the state reaches the workers when the
DataLoader iterator is created::

    dataset.load_state_dict(checkpoint["data"])          # optional, on resume
    for epoch in range(dataset.epoch, num_epochs):
        dataset.set_epoch(epoch)                          # same epoch keeps the position
        for batch in DataLoader(dataset, batch_size=b, num_workers=n, collate_fn=collator):
            ...
            dataset.advance(batch)
            checkpoint["data"] = dataset.state_dict()
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from ..images import IMAGE_ERRORS, load_image
from .datasets import make_sample
from .hard_negatives import stable_seed
from .rows import PARQUET_SUFFIXES, LiteSchema, ProSchema, ReadSchema, RowTable
from .sampler import dist_rank_world

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """A brace pattern ("data-{000000..000009}.tar") or a list of shard paths -> list of shards."""
    shards = wds.shardlists.expand_urls(urls) if isinstance(urls, str) else [str(u) for u in urls]
    if not shards:
        raise ValueError(f"no shards in {urls!r}")
    return shards


class WdsReasonDataset(IterableDataset):
    """Samples of `schema` (the same dicts as the map-style datasets) streamed from tar shards."""

    def __init__(
        self,
        urls: str | Sequence[str],
        schema: LiteSchema | ProSchema | ReadSchema,
        image_processor: Callable | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_shards: bool = True,
        shard_sizes: Mapping[str, int] | None = None,
    ):
        self.shards = expand_shards(urls)
        self.schema = schema
        self.image_processor = image_processor
        self.seed = seed
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        self.shuffle_shards = shuffle_shards
        self.shard_sizes = dict(shard_sizes or {})
        self.epoch = 0
        self.num_workers: int | None = None
        self.consumed: dict[int, int] = {}  # logical worker -> positions used this epoch
        self.batches = 0  # batches used this epoch (all workers)
        self.rotation = 0  # physical worker w plays logical worker (w + rotation) % num_workers
        self.skipped = 0  # counted in the process that decodes; batches report num_skipped

    # ------------------------------------------------------------ epoch, progress and state

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.consumed, self.batches, self.rotation = {}, 0, 0

    def advance(self, batch: Mapping[str, Any]) -> None:
        """Record a batch the trainer used (needs its worker_id, num_workers and num_drawn fields)."""
        self.num_workers = int(batch["num_workers"])
        worker = (int(batch["worker_id"]) + self.rotation) % self.num_workers
        self.consumed[worker] = self.consumed.get(worker, 0) + int(batch["num_drawn"])
        self.batches += 1

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "num_workers": self.num_workers,
            "world_size": self.world_size,
            "batches": self.batches,
            "consumed": {str(w): n for w, n in self.consumed.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(f"webdataset state was saved with world_size {state['world_size']}, now {self.world_size}")
        self.epoch = int(state["epoch"])
        self.num_workers = state.get("num_workers")
        self.consumed = {int(w): int(n) for w, n in state.get("consumed", {}).items()}
        self.batches = int(state.get("batches", 0))
        # The DataLoader restarts its round-robin at worker 0; rotate so the worker whose turn it was
        # goes first, which reproduces the uninterrupted batch order.
        self.rotation = self.batches % self.num_workers if self.num_workers else 0

    # ------------------------------------------------------------ reading

    def shards_for(self, worker: int, num_workers: int, epoch: int | None = None) -> list[str]:
        """The shards (rank, worker) reads in `epoch`, in reading order."""
        shards = list(self.shards)
        if self.shuffle_shards:
            random.Random(stable_seed("wds-shards", self.seed, self.epoch if epoch is None else epoch)).shuffle(shards)
        return shards[self.rank :: self.world_size][worker::num_workers]

    def __iter__(self) -> Iterator[dict | None]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        if self.consumed and self.num_workers not in (None, num_workers):
            raise ValueError(f"webdataset state was saved with {self.num_workers} workers, the DataLoader has {num_workers}")
        worker = (worker + self.rotation) % num_workers
        skip = self.consumed.get(worker, 0)
        shards = self.shards_for(worker, num_workers)
        while skip and shards and shards[0] in self.shard_sizes and self.shard_sizes[shards[0]] <= skip:
            skip -= self.shard_sizes[shards.pop(0)]
        if not shards:
            return
        pipeline = wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples(handler=_warn_and_continue))
        for position, raw in enumerate(pipeline):
            if position >= skip:  # skipped samples are never decoded
                yield self.decode(raw)

    def decode(self, raw: Mapping[str, Any]) -> dict | None:
        """Raw tar members of one sample -> sample dict, or None when the image is missing / unreadable."""
        key = raw["__key__"]
        where = f"{raw.get('__url__', '?')} sample {key}"
        row: dict[str, Any] = {}
        if "json" in raw:
            try:
                row = json.loads(raw["json"])
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{where}: .json is not valid JSON ({err})") from None
        if "txt" in raw and "caption" not in row:
            row["caption"] = raw["txt"].decode("utf-8")
        for field in self.schema.fields:
            if row.get(field) is None:
                raise ValueError(f"{where}: missing field {field!r}")
        key_id = stable_seed(key) & 0x7FFF_FFFF_FFFF
        texts = self.schema.texts(row, where, key=key, epoch=self.epoch, seed=self.seed)
        data = next((raw[ext] for ext in IMAGE_EXTENSIONS if ext in raw), None)
        try:
            if data is None:
                raise ValueError("no image member")
            image = load_image(io.BytesIO(data))
        except IMAGE_ERRORS as err:
            self.skipped += 1
            if self.skipped <= 10:
                logger.warning("skipping image of %s (%s: %s)", where, type(err).__name__, err)
            return None
        return make_sample(key_id, texts, image, self.image_processor)


def _warn_and_continue(err: Exception) -> bool:
    logger.warning("webdataset: %s: %s", type(err).__name__, err)
    return True


def write_wds_shards(
    source: str | Path,
    out_dir: str | Path,
    image_root: str | Path | None = None,
    samples_per_shard: int = 1000,
    prefix: str = "shard",
) -> list[Path]:
    """Rows of a parquet / JSONL file (+ their images) -> img2dataset-style tar shards; returns the shards.

    Each sample gets the image bytes as stored (extension kept), a .json with every other field of the
    row, and a .txt caption (``caption``, else the first ``tb``, else ``trp``) for img2dataset tools.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    names = pq.read_schema(source).names if Path(source).suffix in PARQUET_SUFFIXES else ()
    rows = RowTable(source, ("image_path",), optional=names)
    root = Path(image_root) if image_root is not None else Path(source).parent
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    writer = None
    for index in range(len(rows)):
        if index % samples_per_shard == 0:
            if writer is not None:
                writer.close()
            shards.append(out / f"{prefix}-{len(shards):06d}.tar")
            writer = wds.TarWriter(str(shards[-1]))
        row = rows.row(index)
        path = Path(row.pop("image_path"))
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise FileNotFoundError(f"{rows.where(index)}: image not found: {path}")
        fields = {k: v for k, v in row.items() if v is not None}
        caption = fields.get("caption") or (fields.get("tb") or [None])[0] or fields.get("trp") or ""
        ext = path.suffix.lstrip(".").lower() or "jpg"
        writer.write({"__key__": f"{index:09d}", ext: path.read_bytes(), "json": fields, "txt": str(caption)})
    if writer is not None:
        writer.close()
    return shards
