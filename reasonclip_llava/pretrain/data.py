"""The stage's training batches: dataset + collator + resumable sampler, endless over epochs.

Which dataset a stage reads (reasonclip_llava.data):

    stage1, stage0                 ReasonLiteDataset  -> desc_*, reason_*
    stage0 with hard negatives     ReadDataset over tb (descriptive) or trl (reasoning) -> caption_*, neg_*
    stage2                         ReasonProDataset   -> reason_*, text_category, image_categories
    read                           ReadDataset over data.caption_columns -> caption_*, paraphrase_*, neg_*,
                                   recon_labels (T5 ids)

`TrainData.batches(device)` yields device batches forever and records the exact sample position after
each batch it hands out (skipped images included), so the position saved with a checkpoint is the
position after the last batch that went into it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, DataLoader

from ..data import ReadDataset, ReasonCollator, ReasonLiteDataset, ReasonProDataset, ResumableDistributedSampler
from ..data.rows import LiteSchema, ProSchema, ReadSchema
from ..data.wds import WdsReasonDataset
from ..encoder.modeling import ReasonCLIPForPretraining
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


def caption_columns(config: PretrainConfig) -> tuple[str, ...]:
    """Caption columns a ReadDataset pools: data.caption_columns, else READ's "captions" / stage 0's tb or trl."""
    if config.data.caption_columns:
        return tuple(config.data.caption_columns)
    if config.stage.name == "read":
        return ("captions",)
    return ("tb",) if config.stage.captions == "descriptive" else ("trl",)


def uses_caption_pool(config: PretrainConfig) -> bool:
    """READ, and stage 0 with hard negatives or explicit caption columns, read single-caption samples."""
    stage = config.stage
    return stage.name == "read" or (stage.name == "stage0" and (stage.hard_negatives > 0 or bool(config.data.caption_columns)))


def _no_negatives(caption: str, salt: object) -> list[str]:
    return []  # stage 0 without hard negatives: nothing to generate


def _negative_generator(config: PretrainConfig):  # noqa: ANN202
    return None if config.stage.hard_negatives else _no_negatives  # None: the data package's swap generator


def _schema(config: PretrainConfig):  # noqa: ANN202
    if uses_caption_pool(config):
        return ReadSchema(caption_columns(config), k=config.stage.hard_negatives, seed=config.runtime.seed,
                          negative_generator=_negative_generator(config), recon_target=config.stage.recon_target)
    return ProSchema() if config.stage.name == "stage2" else LiteSchema()


class _Concat(ConcatDataset):
    """Several parquet files read as one dataset (epochs reach every part)."""

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            part.set_epoch(epoch)


def _map_dataset(config: PretrainConfig, path: Path, image_processor: Any):  # noqa: ANN202
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".pq", ".jsonl"))
        if not files:
            raise FileNotFoundError(f"config key 'data.train': no .parquet / .jsonl files in {path}")
        return _Concat([_map_dataset(config, f, image_processor) for f in files]) if len(files) > 1 else _map_dataset(config, files[0], image_processor)
    stage, seed = config.stage, config.runtime.seed
    image_root = config.data.image_root or None
    if uses_caption_pool(config):
        return ReadDataset(path, image_root, image_processor, seed, caption_columns=caption_columns(config), k=stage.hard_negatives,
                           negative_generator=_negative_generator(config), recon_target=stage.recon_target)
    if stage.name == "stage2":
        return ReasonProDataset(path, image_root, image_processor, seed)
    return ReasonLiteDataset(path, image_root, image_processor, seed)


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
        self.skipped_images = 0  # summed from the batches' num_skipped (counted where the images were read)
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
                yielded += 1
                yield _to_device(_truncate(batch, size), device)
            # One empty epoch can be a resume at an epoch's end; two in a row mean nothing is readable
            # (every shard or image broken): stop instead of retrying forever.
            empty_epochs = empty_epochs + 1 if yielded == 0 else 0
            if empty_epochs == 2:
                raise ValueError(f"config key 'data.train': {self.source} gave no usable batch in a whole epoch "
                                 f"({self.skipped_images} unreadable images; unreadable shards are in the warnings)")
            epoch += 1

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


def build_train_data(config: PretrainConfig, encoder: ReasonCLIPForPretraining, world_size: int, rank: int) -> TrainData:
    """Dataset, collator (CLIP tokenizer, T5 tokenizer for READ), sampler and DataLoader of the stage."""
    from transformers import AutoImageProcessor, AutoTokenizer

    source = config.model.tokenizer or config.model.name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        image_processor = AutoImageProcessor.from_pretrained(config.model.name_or_path)
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
    collator = ReasonCollator(
        tokenizer,
        max_length=config.data.max_length,
        t5_tokenizer=t5_tokenizer,
        # SigLIP's text tower pools the last position: it was trained on max-length padding.
        padding="max_length" if encoder.family == "siglip" else "longest",
        lowercase=lowercases_text(config, encoder),
    )
    stage = config.stage
    unused = (() if stage.name == "read" and stage.recon_weight > 0 else ("recon_target",)) + \
             (() if stage.name == "read" and stage.align_weight > 0 else ("paraphrase",)) + \
             (() if stage.hard_negatives > 0 else ("negatives",))
    collate = _DropFields(collator, unused) if unused else collator
    path, seed = Path(config.data.train), config.runtime.seed
    generator = torch.Generator().manual_seed(seed)  # DataLoader iterators draw their base seed here, not from the global RNG
    workers = config.data.num_workers
    common = dict(batch_size=config.data.batch_size, collate_fn=collate, num_workers=workers, drop_last=True,
                  generator=generator, pin_memory=torch.cuda.is_available(), persistent_workers=False)
    if data_format(config) == "webdataset":
        shards = sorted(str(p) for p in path.glob("*.tar")) if path.is_dir() else config.data.train
        dataset = WdsReasonDataset(shards, _schema(config), image_processor, seed, rank=rank, world_size=world_size)
        return TrainData(dataset, DataLoader(dataset, **common), None, world_size, source=config.data.train)
    if not path.exists():
        raise FileNotFoundError(f"config key 'data.train': {path} does not exist")
    dataset = _map_dataset(config, path, image_processor)
    if len(dataset) < config.data.batch_size * world_size:
        raise ValueError(f"config key 'data.batch_size': {path} has {len(dataset)} rows, fewer than one global batch ({config.data.batch_size} x {world_size})")
    sampler = ResumableDistributedSampler(len(dataset), rank=rank, world_size=world_size, seed=seed)
    return TrainData(dataset, DataLoader(dataset, sampler=sampler, **common), sampler, world_size, source=config.data.train)
