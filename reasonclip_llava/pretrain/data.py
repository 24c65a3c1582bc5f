"""The stage's training batches: dataset + collator + resumable sampler, endless over epochs.

Which schema a stage reads each source with (reasonclip_llava.data.rows):

    stage1   LiteSchema (ReasonLite: tb x trl pairs)             -> desc_*, reason_*
    stage2   ProSchema (ReasonPro: trp + category labels)        -> reason_*, text_category, image_categories
    stage0   ReadSchema caption pool, one stream: tb (ReasonLite or CC12M-Refined) for descriptive;
             trl (ReasonLite) or trp (ReasonPro) for reasoning    -> caption_* (+ neg_* with hard negatives)
    read     ReadSchema over data.caption_columns                 -> caption_*, paraphrase_*, neg_*, recon_labels

`data.train` plus `data.sources` are read together (one dataset, shuffled as one; stage 0 reasoning =
ReasonLite trl + ReasonPro trp as published), each source with the schema its columns call for. With
`data.holdout_ratio` each source loses a seeded split of its rows to `TrainData.heldout`, read in
order by `TrainData.one_pass` for the held-out loss.

`TrainData.batches(device)` yields device batches forever and records the exact sample position after
each batch it hands out (skipped images included), so the position saved with a checkpoint is the
position after the last batch that went into it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, DataLoader

from ..data import ReasonCollator, ResumableDistributedSampler
from ..data.datasets import ImageTextDataset, image_groups
from ..data.rows import PARQUET_SUFFIXES, LiteSchema, ProSchema, ReadSchema, read_paraphrases
from ..data.sampler import DistinctImageSampler
from ..data.wds import WdsReasonDataset, expand_shards
from ..encoder.modeling import ReasonCLIPForPretraining
from ..encoder.text import TextRule
from .config import PretrainConfig

PER_SAMPLE_SKIP = ("batch_size", "num_skipped", "num_drawn", "worker_id", "num_workers")


def data_format(config: PretrainConfig) -> str:
    if config.data.format != "auto":
        return config.data.format
    train = config.data.train
    # A brace pattern ("shards-{000..099}.tar") ends in .tar too; a "{" alone (a folder named "data_{}") is no shard.
    if train.endswith((".tar", ".tar.gz", ".tgz")) or (Path(train).is_dir() and any(Path(train).glob("*.tar"))):
        return "webdataset"
    return "jsonl" if train.endswith((".jsonl", ".json")) else "parquet"


def source_columns(path: Path, streaming: bool = False) -> list[str]:
    """Column names of a source: a parquet schema, a JSONL file's first row, the first .json of a tar shard."""
    if streaming:
        import tarfile

        first = sorted(path.glob("*.tar"))[0] if path.is_dir() else Path(expand_shards(str(path))[0])
        try:
            with tarfile.open(first) as tar:
                member = next((m for m in tar if m.name.endswith(".json")), None)
                return sorted(json.load(tar.extractfile(member))) if member is not None else []
        except (OSError, tarfile.TarError, ValueError):
            return []  # an unreadable shard is reported by the stream itself
    if path.is_dir():
        files = data_files(path)
        path = files[0] if files else path
    if path.suffix in PARQUET_SUFFIXES:
        return pq.read_schema(path).names
    if path.is_file():
        with path.open(encoding="utf-8") as lines:
            first = next((line for line in lines if line.strip()), "{}")
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            return []  # RowTable names the bad line
        return sorted(row) if isinstance(row, dict) else []
    return []


def caption_columns(config: PretrainConfig, columns: Sequence[str] = ()) -> tuple[str, ...]:
    """Caption columns a caption pool reads: data.caption_columns, else READ's "captions" / stage 0's stream.

    Stage 0 reasoning takes trl from ReasonLite and trp from a ReasonPro source (its `columns`).
    """
    if config.data.caption_columns:
        return tuple(config.data.caption_columns)
    if config.stage.name == "read":
        return ("captions",)
    if config.stage.captions == "descriptive":
        return ("tb",)
    return ("trp",) if "trp" in columns and "trl" not in columns else ("trl",)


def source_schema(config: PretrainConfig, columns: Sequence[str] = ()) -> LiteSchema | ProSchema | ReadSchema:
    """The schema a stage reads a source with: stage 1 ReasonLite pairs, stage 2 ReasonPro, else a caption pool."""
    if config.stage.name == "stage1":
        return LiteSchema()
    if config.stage.name == "stage2":
        return ProSchema()
    paraphrases = read_paraphrases(config.data.paraphrases) if config.data.paraphrases else None
    return ReadSchema(caption_columns(config, columns), k=config.stage.hard_negatives, seed=config.runtime.seed,
                      recon_target=config.stage.recon_target, negatives=config.stage.negatives, paraphrases=paraphrases)


class _Concat(ConcatDataset):
    """Several files (chunks of a source, or several sources) read as one dataset (epochs reach every part)."""

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            part.set_epoch(epoch)


def data_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix in (*PARQUET_SUFFIXES, ".jsonl"))


def source_parts(config: PretrainConfig, path: Path, key: str, image_processor: Any = None) -> list[ImageTextDataset]:
    """One dataset per file of a source (a file, or a dir of chunks in name order), in the source's schema."""
    if not path.exists():
        raise FileNotFoundError(f"config key '{key}': {path} does not exist")
    files = data_files(path) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"config key '{key}': no .parquet / .jsonl files in {path}")
    schema = source_schema(config, source_columns(path))
    return [ImageTextDataset(f, schema, config.data.image_root or None, image_processor, config.runtime.seed,
                             samples=config.data.samples) for f in files]


def holdout_rows(num_rows: int, ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows), sorted: datasets' train_test_split(test_size=ratio, seed=seed) draw.

    As the authors split each source: ceil(ratio x rows) held out, the first of a
    numpy.random.default_rng(seed) permutation of the rows.
    """
    if ratio <= 0:
        return np.arange(num_rows), np.arange(0)
    num_heldout = math.ceil(ratio * num_rows)
    if num_heldout >= num_rows:
        raise ValueError(f"config key 'data.holdout_ratio': {ratio} of {num_rows} rows leaves nothing to train on")
    permutation = np.random.default_rng(seed).permutation(num_rows)
    return np.sort(permutation[num_heldout:]), np.sort(permutation[:num_heldout])


def split_source(parts: list[ImageTextDataset], ratio: float, seed: int) -> tuple[list[ImageTextDataset], list[ImageTextDataset]]:
    """Train and held-out datasets of one source's files, the split drawn over all its rows in file order."""
    if ratio <= 0:
        return parts, []
    sizes = [len(part.rows) for part in parts]
    train, heldout = holdout_rows(sum(sizes), ratio, seed)
    bounds = np.cumsum([0, *sizes])
    pick = lambda rows, i: rows[(rows >= bounds[i]) & (rows < bounds[i + 1])] - bounds[i]  # noqa: E731
    train_parts = [part.restrict_rows(pick(train, i)) for i, part in enumerate(parts)]
    heldout_parts = [part.subset(pick(heldout, i)) for i, part in enumerate(parts)]
    return [p for p in train_parts if len(p)], [p for p in heldout_parts if len(p)]


def _one(parts: list[ImageTextDataset]) -> Any:
    return parts[0] if len(parts) == 1 else _Concat(parts)


def lowercases_text(config: PretrainConfig, encoder: ReasonCLIPForPretraining) -> bool:
    """model.lowercase_text, or (null) whether the model is a SigLIP 2 one, by the authors' rule: "siglip2"
    in the model's name (here also the tokenizer's and, for a training checkpoint, its base model's)."""
    if config.model.lowercase_text is not None:
        return config.model.lowercase_text
    names = (config.model.name_or_path, config.model.tokenizer or "", encoder.info.base_model)
    return encoder.family == "siglip" and any("siglip2" in str(name).lower() for name in names)


class TrainData:
    """Endless device batches for one rank plus the state that resumes them at the exact sample."""

    def __init__(self, dataset: Any, loader: DataLoader, sampler: ResumableDistributedSampler | None, world_size: int,
                 source: str = "the training data"):
        self.dataset, self.loader, self.sampler, self.source = dataset, loader, sampler, source
        self.world_size = world_size
        self.heldout: TrainData | None = None  # the held-out rows (data.holdout_ratio), read by one_pass
        self.skipped_images = 0  # summed from the batches' num_skipped (counted where the images were read)
        self.text_rule: TextRule | None = None  # how the collator tokenizes (set by build_train_data)
        batch = loader.batch_size
        self.batches_per_epoch = None if sampler is None else sampler.num_samples // world_size // batch

    # ------------------------------------------------------------------ state
    @property
    def epoch(self) -> int:
        return (self.sampler or self.dataset).epoch

    def state_dict(self) -> dict[str, Any]:
        position = self.sampler.state_dict() if self.sampler is not None else self.dataset.state_dict()
        return {"position": position, "skipped_images": self.skipped_images}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        (self.sampler or self.dataset).load_state_dict(state["position"])
        self.skipped_images = int(state["skipped_images"])

    # ------------------------------------------------------------------ batches
    def batches(self, device: torch.device) -> Iterator[dict[str, Any]]:
        epoch, empty_epochs = self.epoch, 0
        while True:
            yielded = 0
            for batch in self._epoch_batches(epoch, device):
                yielded += 1
                yield batch
            # One empty epoch can be a resume at an epoch's end; two in a row mean nothing is readable
            # (every shard or image broken): stop instead of retrying forever.
            empty_epochs = empty_epochs + 1 if yielded == 0 else 0
            if empty_epochs == 2:
                raise ValueError(f"config key 'data.train': {self.source} gave no usable batch in a whole epoch "
                                 f"({self.skipped_images} unreadable images; unreadable shards are in the warnings)")
            epoch += 1

    def one_pass(self, device: torch.device) -> Iterator[dict[str, Any]]:
        """Every sample once, in order, from the start (the held-out evaluation)."""
        self.sampler.consumed = 0  # an evaluation pass always starts at the beginning of epoch 0
        yield from self._epoch_batches(0, device)

    def _epoch_batches(self, epoch: int, device: torch.device) -> Iterator[dict[str, Any]]:
        self.dataset.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)  # same epoch keeps the restored position
        for batch in self.loader:
            if self.sampler is not None:
                self.sampler.advance(batch["num_drawn"])
            else:
                self.dataset.advance(batch)
            self.skipped_images += int(batch["num_skipped"])
            size = self._common_batch_size(batch["batch_size"], device)
            if size == 0:
                continue  # every image of this batch (on some rank) was unreadable: draw the next one
            yield _to_device(_truncate(batch, size), device)

    def _common_batch_size(self, size: int, device: torch.device) -> int:
        """Ranks must contribute equal batches to the gathered loss: trim to the smallest after skips."""
        if self.world_size == 1:
            return size
        count = torch.tensor(size, device=device)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        return int(count.item())


class _DropFields:
    """Collate without the sample fields the stage does not use (no T5 ids without reconstruction)."""

    def __init__(self, collator: ReasonCollator, drop: tuple[str, ...]):
        self.collator, self.drop = collator, drop

    def __call__(self, samples: list[dict | None]) -> dict[str, Any]:
        return self.collator([None if s is None else {k: v for k, v in s.items() if k not in self.drop} for s in samples])


def _truncate(batch: dict[str, Any], size: int) -> dict[str, Any]:
    if size == batch["batch_size"]:
        return batch
    k = batch["neg_input_ids"].shape[0] // batch["batch_size"] if "neg_input_ids" in batch else 0
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value[: size * k] if key.startswith("neg_") else value[:size]
        out[key] = value
    out["batch_size"] = size
    return out


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def refuse_what_a_stream_cannot_do(config: PretrainConfig) -> None:
    """Options that need map-style data, refused for webdataset shards before anything is loaded."""
    if data_format(config) != "webdataset":
        return
    data = config.data
    for key, unsupported in (("data.sources", bool(data.sources)), ("data.holdout_ratio", data.holdout_ratio > 0),
                             ("data.samples", data.samples == "all_pairs"), ("data.sampler", data.sampler != "random")):
        if unsupported:
            raise ValueError(f"config key '{key}': {getattr(data, key.split('.')[1])!r} needs map-style data (parquet / JSONL), "
                             "not webdataset shards, which stream in shard order")


def build_train_data(config: PretrainConfig, encoder: ReasonCLIPForPretraining, world_size: int, rank: int) -> TrainData:
    """Dataset, collator (CLIP tokenizer, T5 tokenizer for READ), sampler and DataLoader of the stage."""
    from transformers import AutoTokenizer

    from ..encoder.open_clip_image_processor import load_image_processor

    refuse_what_a_stream_cannot_do(config)

    source = config.model.tokenizer or config.model.name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        image_processor = load_image_processor(config.model.name_or_path)
    except OSError as error:
        raise FileNotFoundError(f"config key 'model.tokenizer' / 'model.name_or_path': cannot load a tokenizer and image processor: {error}") from None
    t5_tokenizer = None
    if config.stage.name == "read" and config.stage.recon_weight > 0:
        name = config.stage.t5_tokenizer or config.stage.t5_model
        try:
            t5_tokenizer = AutoTokenizer.from_pretrained(name)
        except OSError:
            key = "stage.t5_tokenizer" if config.stage.t5_tokenizer else "stage.t5_model"
            raise FileNotFoundError(f"config key '{key}': cannot load a T5 tokenizer from '{name}'") from None
    # The project's one text rule (encoder/text.py: SigLIP pads to max_length, open_clip conversions clean as
    # open_clip), with the recipe's length and lowercasing.
    text_rule = replace(TextRule.for_model(encoder, tokenizer), max_length=config.data.max_length,
                        lowercase=lowercases_text(config, encoder))
    collator = ReasonCollator(tokenizer, t5_tokenizer=t5_tokenizer, text_rule=text_rule)
    stage = config.stage
    unused = (() if stage.name == "read" and stage.recon_weight > 0 else ("recon_target",)) + \
             (() if stage.name == "read" and stage.align_weight > 0 else ("paraphrase",)) + \
             (() if stage.hard_negatives > 0 else ("negatives",))
    collate = _DropFields(collator, unused) if unused else collator
    path, seed, data = Path(config.data.train), config.runtime.seed, config.data
    generator = torch.Generator().manual_seed(seed)  # DataLoader iterators draw their base seed here, not from the global RNG
    common = dict(batch_size=data.batch_size, collate_fn=collate, num_workers=data.num_workers,
                  generator=generator, pin_memory=torch.cuda.is_available(), persistent_workers=False)
    if data_format(config) == "webdataset":
        shards = sorted(str(p) for p in path.glob("*.tar")) if path.is_dir() else data.train
        schema = source_schema(config, source_columns(path, streaming=True))
        dataset = WdsReasonDataset(shards, schema, image_processor, seed, rank=rank, world_size=world_size)
        train_data = TrainData(dataset, DataLoader(dataset, drop_last=True, **common), None, world_size, source=data.train)
        train_data.text_rule = text_rule
        return train_data

    train_parts, heldout_parts = [], []
    for key, source in [("data.train", data.train), *((f"data.sources[{i}]", s) for i, s in enumerate(data.sources))]:
        train, heldout = split_source(source_parts(config, Path(source), key, image_processor), data.holdout_ratio, data.holdout_seed)
        train_parts += train
        heldout_parts += heldout
    dataset = _one(train_parts)
    global_batch = data.batch_size * world_size
    if len(dataset) < global_batch:
        raise ValueError(f"config key 'data.batch_size': {path} has {len(dataset)} training samples, fewer than one global batch ({data.batch_size} x {world_size})")
    if data.sampler == "distinct_images":
        sampler = DistinctImageSampler(image_groups(train_parts), global_batch, rank=rank, world_size=world_size, seed=seed)
    else:
        sampler = ResumableDistributedSampler(len(dataset), rank=rank, world_size=world_size, seed=seed)
    train_data = TrainData(dataset, DataLoader(dataset, sampler=sampler, drop_last=True, **common), sampler, world_size, source=data.train)
    train_data.text_rule = text_rule
    if heldout_parts:
        heldout = _one(heldout_parts)
        order = ResumableDistributedSampler(len(heldout), rank=rank, world_size=world_size, shuffle=False)
        # Its own generator: evaluation passes must not move the training loader's seed stream.
        loader = DataLoader(heldout, sampler=order, drop_last=False, **{**common, "generator": torch.Generator().manual_seed(seed)})
        train_data.heldout = TrainData(heldout, loader, order, world_size,
                                       source=f"the held-out rows of {data.train}")
    return train_data
