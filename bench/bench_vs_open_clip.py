"""Training-step throughput: our trainer (`pretrain`) vs open_clip_train's `train_one_epoch`.

Same architecture (ViT-B/32, or ViT-L/14-336 with `--size l14-336`, QuickGELU, random init; `--layers`
overrides the depth of both towers), same precision (fp32, or `--precision bf16`: open_clip's amp_bf16
vs our runtime.mixed_precision=bf16, both autocast over fp32 weights), same images and token ids, same optimizer settings (AdamW lr 1e-5,
wd 0.05, warmup + cosine), no data loading on either side: both loops draw pre-made batches from memory
and the time between two consecutive batch draws is one step (forward, backward, optimizer step,
scheduler, logit_scale clamp, bookkeeping). Reported: median step time of each and the ratio
open_clip / ours (> 1: ours is faster). Two rows for ours: captions padded to 77 like open_clip's
tokenizer (same batch), and padded to the longest caption as our collator does.

open_clip imports torchvision, which cannot be installed beside this project's torch, so run this in a
separate virtual environment (wheels are on local disk for Python 3.11; no network needed):

    python -m venv /tmp/ocvenv
    /tmp/ocvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 open-clip-torch==3.3.0 timm ftfy regex
    /tmp/ocvenv/bin/pip install transformers==5.23.0 accelerate==1.15.0 safetensors tokenizers huggingface_hub \
        pyarrow webdataset pyyaml sentencepiece protobuf tqdm tensorboard
    /tmp/ocvenv/bin/pip install --no-deps -e .          # this package, without its (torch) dependencies
    /tmp/ocvenv/bin/python bench/bench_vs_open_clip.py --layers 12 --batch 32 --steps 6
    # on a GPU: python bench/bench_vs_open_clip.py --size l14-336 --precision bf16 --batch 64 --device cuda

(the torch wheel pulls its CUDA libraries, ~5 GB installed; the benchmark itself runs on CPU or GPU.)
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch


# name -> vision (width, layers, heads, patch, image size), text (width, layers, heads), joint dim; --layers overrides both depths
SIZES = {
    "b32": ((768, 12, 12, 32, 224), (512, 12, 8), 512),
    "l14-336": ((1024, 24, 16, 14, 336), (768, 12, 12), 768),
}


def towers(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    (v_width, v_layers, v_heads, patch, image), (t_width, t_layers, t_heads), joint = SIZES[args.size]
    if args.layers:
        v_layers = t_layers = args.layers
    return (v_width, v_layers, v_heads, patch, image), (t_width, t_layers, t_heads), joint


def batches(num: int, batch: int, caption_tokens: int, image_size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(images [B, 3, S, S], open_clip-style token ids [B, 77]: <sot> ... <eot> then 0-padding)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        ids = torch.zeros(batch, 77, dtype=torch.long)
        lengths = torch.randint(caption_tokens // 2, caption_tokens + 1, (batch,), generator=g)
        for row, length in enumerate(lengths.tolist()):
            ids[row, 0], ids[row, length - 1] = 49406, 49407
            ids[row, 1 : length - 1] = torch.randint(1000, 40000, (length - 2,), generator=g)
        out.append((torch.randn(batch, 3, image_size, image_size, generator=g), ids))
    return out


class Timeline(list):
    """perf_counter() at every batch draw; consecutive differences are step times."""

    def steps(self, skip: int) -> list[float]:
        return [b - a for a, b in zip(self[skip:], self[skip + 1 :])]


# ------------------------------------------------------------------------------------------ open_clip
def run_open_clip(data: list, args: argparse.Namespace, compiled: bool = False) -> list[float]:
    import open_clip
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    (v_width, v_layers, _, patch, image), (t_width, t_layers, t_heads), joint = towers(args)
    torch.manual_seed(0)
    model = open_clip.CLIP(  # open_clip's vision heads = width // 64, as in CLIP
        embed_dim=joint,
        vision_cfg=open_clip.CLIPVisionCfg(layers=v_layers, width=v_width, patch_size=patch, image_size=image),
        text_cfg=open_clip.CLIPTextCfg(layers=t_layers, width=t_width, heads=t_heads, context_length=77, vocab_size=49408),
        quick_gelu=True,
        output_dict=True,  # as open_clip_train/main.py creates it
    ).to(args.device)
    if compiled:  # what open_clip_train/main.py does with --torchcompile
        model = torch.compile(model)
    # open_clip_train/main.py's parameter groups: no weight decay on gains, biases, logit_scale.
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.05}],
        lr=1e-5, betas=(0.9, 0.98), eps=1e-6,
    )
    total = len(data)
    scheduler = cosine_lr(optimizer, 1e-5, max(1, total // 10), total)
    timeline = Timeline()

    class Loader:
        num_batches, num_samples = total, total * args.batch

        def __iter__(self):
            for images, texts in data:
                timeline.append(time.perf_counter())
                yield images, texts
            timeline.append(time.perf_counter())

    run_args = SimpleNamespace(
        device=args.device, precision="amp_bf16" if args.precision == "bf16" else "fp32", distill=False, accum_freq=1, skip_scheduler=False, grad_clip_norm=None,
        horovod=False, log_every_n_steps=10, batch_size=args.batch, world_size=1, rank=0, local_rank=0, wandb=False,
    )
    data_info = SimpleNamespace(dataloader=Loader(), set_epoch=lambda epoch: None)  # open_clip_train.data.DataInfo's interface
    train_one_epoch(model, {"train": data_info}, open_clip.ClipLoss(), 0, optimizer, None, scheduler, None, run_args)
    return timeline.steps(skip=args.warmup)


# ------------------------------------------------------------------------------------------ ours
def run_ours(data: list, args: argparse.Namespace, dynamic_padding: bool, compiled: bool = False) -> list[float]:
    from transformers import CLIPConfig, CLIPModel

    import reasonclip_llava.pretrain.trainer as trainer
    from reasonclip_llava.pretrain.config import load_config

    work = Path(tempfile.mkdtemp(prefix="bench_ours_"))
    (v_width, v_layers, v_heads, patch, image), (t_width, t_layers, t_heads), joint = towers(args)
    vision = dict(hidden_size=v_width, intermediate_size=4 * v_width, num_attention_heads=v_heads, num_hidden_layers=v_layers,
                  image_size=image, patch_size=patch, hidden_act="quick_gelu")
    text = dict(hidden_size=t_width, intermediate_size=4 * t_width, num_attention_heads=t_heads, num_hidden_layers=t_layers,
                vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                hidden_act="quick_gelu")
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=joint)).save_pretrained(work / "model")
    timeline = Timeline()

    class InMemoryData:  # stands in for build_train_data(): the same loop, no image decoding
        batches_per_epoch, skipped_images, heldout = len(data), 0, None

        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            pass

        def batches(self, device: torch.device):
            for images, ids in data:
                timeline.append(time.perf_counter())
                if dynamic_padding:
                    ids = ids[:, : int(ids.ne(0).sum(1).max())]
                ids = ids.masked_fill(ids == 0, 49407)  # HF CLIP pads with <eot>; it pools at the first one
                yield {"pixel_values": images.to(device), "desc_input_ids": ids.to(device)}
            timeline.append(time.perf_counter())
            while True:  # the loop ends at max_steps; never reached
                yield {}

    original = trainer.build_train_data
    trainer.build_train_data = lambda *a, **k: InMemoryData()
    try:
        config = load_config(None, [
            f"--model.name_or_path={work / 'model'}", "--data.train=in-memory", f"--runtime.output_dir={work / 'run'}",
            "--stage.name=stage0", f"--data.batch_size={args.batch}", f"--schedule.max_steps={len(data)}", "--schedule.warmup_ratio=0.1",
            "--optim.lr=1e-5", "--optim.weight_decay=0.05", f"--optim.logit_scale_max={math.log(100)}", "--runtime.save_every=0",
            "--runtime.report_to=", "--runtime.progress_bar=false", "--runtime.log_every=10",
            f"--runtime.mixed_precision={'bf16' if args.precision == 'bf16' else 'no'}", f"--model.torch_compile={compiled}",
        ])
        trainer.pretrain(config)
    finally:
        trainer.build_train_data = original
    return timeline.steps(skip=args.warmup)[: len(data) - args.warmup]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="b32", help="ViT-B/32 or ViT-L/14-336 shaped CLIP")
    parser.add_argument("--layers", type=int, default=None, help="layers per tower (default: the size's real depths)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: amp_bf16 / mixed_precision=bf16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--caption-tokens", type=int, default=24, help="longest caption (tokens); ReasonLite: <= 30 words")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the three runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="add compiled runs of both (raise --warmup: compiling happens there)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = batches(args.steps + args.warmup, args.batch, args.caption_tokens, towers(args)[0][4])
    runs = {
        "open_clip": lambda: run_open_clip(data, args),
        "ours_pad77": lambda: run_ours(data, args, dynamic_padding=False),
        "ours_dynamic": lambda: run_ours(data, args, dynamic_padding=True),
    }
    if args.compile:  # both sides compiled: open_clip whole-model torch.compile, ours per layer (model.torch_compile)
        runs["open_clip_compiled"] = lambda: run_open_clip(data, args, compiled=True)
        runs["ours_compiled"] = lambda: run_ours(data, args, dynamic_padding=True, compiled=True)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):  # interleaved so load changes hit every run alike
        for name, run in runs.items():
            times[name] += run()
    median = {k: statistics.median(v) for k, v in times.items()}
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} device={device_name} size={args.size} layers={towers(args)[0][1]}/{towers(args)[1][1]} "
          f"precision={args.precision} batch={args.batch} "
          f"steps={args.steps}x{args.rounds} caption_tokens<={args.caption_tokens}")
    for name, value in median.items():
        print(f"  {name:13s} {value * 1000:9.1f} ms/step  {args.batch / value:8.1f} samples/s")
    print(f"throughput ours / open_clip (same 77-token batch)  = {median['open_clip'] / median['ours_pad77']:.3f}x")
    print(f"throughput ours / open_clip (our dynamic padding)  = {median['open_clip'] / median['ours_dynamic']:.3f}x  (goal >= 1.3x)")
    if args.compile:
        print(f"throughput ours compiled / open_clip eager         = {median['open_clip'] / median['ours_compiled']:.3f}x")
        print(f"throughput ours compiled / open_clip compiled      = {median['open_clip_compiled'] / median['ours_compiled']:.3f}x")


if __name__ == "__main__":
    main()
