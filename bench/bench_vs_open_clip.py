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

Modes (each a row, all in the same run): `--compile` adds open_clip at its fastest compile setting in the
installed open-clip-torch (3.3.0 has only `--torchcompile`: torch.compile of the whole model; a newer one's
`--torchcompile-strategy` is reported but not driven here) and ours with model.torch_compile=regional and
=step; `--fp8 tensorwise|rowwise` adds ours with runtime.fp8 (under `--fp8-compile`, default step). Every row prints MFU:
forward + backward FLOPs of its own batch shape (FlopCounterMode on a meta-device copy of our stage-0
objective, the same architecture as open_clip's) over its median step time and the device's dense bf16
peak (pretrain/speed.py's table; `--peak-tflops` elsewhere); compiled rows print dynamo's graph breaks.
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
from torch._dynamo.utils import counters

from bench_pretrain_steps import device_label, mfu_text
from reasonclip_llava.pretrain import speed


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
    if compiled:  # what open_clip_train/main.py does with --torchcompile (the only compile flag of 3.3.0)
        model = torch.compile(model, **speed.COMPILE_OPTIONS)
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
def clip_config(args: argparse.Namespace) -> dict[str, Any]:
    """CLIPConfig kwargs of the same architecture as the open_clip model (QuickGELU, MLP 4x, 77 positions)."""
    (v_width, v_layers, v_heads, patch, image), (t_width, t_layers, t_heads), joint = towers(args)
    vision = dict(hidden_size=v_width, intermediate_size=4 * v_width, num_attention_heads=v_heads, num_hidden_layers=v_layers,
                  image_size=image, patch_size=patch, hidden_act="quick_gelu")
    text = dict(hidden_size=t_width, intermediate_size=4 * t_width, num_attention_heads=t_heads, num_hidden_layers=t_layers,
                vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                hidden_act="quick_gelu")
    return dict(vision_config=vision, text_config=text, projection_dim=joint)


def open_clip_compile_flags() -> list[str]:
    """The --torchcompile* flags the installed open_clip_train defines (read from its argument parser's source)."""
    import inspect
    import re

    import open_clip_train.params

    return sorted(set(re.findall(r"--torchcompile[\w-]*", inspect.getsource(open_clip_train.params))))


_SAVED: dict[str, Path] = {}


def run_ours(data: list, args: argparse.Namespace, dynamic_padding: bool, mode: str = "none", fp8: str = "none") -> list[float]:
    from transformers import CLIPConfig, CLIPModel

    import reasonclip_llava.pretrain.trainer as trainer
    from reasonclip_llava.pretrain.config import load_config

    work = Path(tempfile.mkdtemp(prefix="bench_ours_"))
    if "model" not in _SAVED:  # one random-init checkpoint for every run of ours (writing ViT-L/14 takes seconds)
        torch.manual_seed(0)
        CLIPModel(CLIPConfig(**clip_config(args))).save_pretrained(work / "model")
        _SAVED["model"] = work / "model"
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
            f"--model.name_or_path={_SAVED['model']}", "--data.train=in-memory", f"--runtime.output_dir={work / 'run'}",
            "--stage.name=stage0", f"--data.batch_size={args.batch}", f"--schedule.max_steps={len(data)}", "--schedule.warmup_ratio=0.1",
            "--optim.lr=1e-5", "--optim.weight_decay=0.05", f"--optim.logit_scale_max={math.log(100)}", "--runtime.save_every=0",
            "--runtime.report_to=", "--runtime.progress_bar=false", "--runtime.log_every=10",
            f"--runtime.mixed_precision={'bf16' if args.precision == 'bf16' else 'no'}", f"--model.torch_compile={mode}",
            f"--runtime.fp8={fp8}", f"--model.attention={args.attention}",
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
    parser.add_argument("--fp8", choices=speed.FP8_RECIPES, default="none", help="add ours with runtime.fp8 (see --fp8-compile)")
    parser.add_argument("--fp8-compile", default="step", help="with --compile: the compile modes of the fp8 rows (regional,step)")
    parser.add_argument("--attention", choices=speed.ATTENTION_BACKENDS, default="sdpa", help="model.attention for ours")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by device name)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend for both sides (default inductor; "
                        "aot_eager proves the rows on a CPU without inductor's minutes of C++ codegen)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile_backend:
        speed.COMPILE_OPTIONS["backend"] = args.compile_backend
    data = batches(args.steps + args.warmup, args.batch, args.caption_tokens, towers(args)[0][4])
    runs = {
        "open_clip": lambda: run_open_clip(data, args),
        "ours_pad77": lambda: run_ours(data, args, dynamic_padding=False),
        "ours_dynamic": lambda: run_ours(data, args, dynamic_padding=True),
    }
    compile_modes = ["regional", "step"] if args.compile else []
    if args.compile:  # both sides at their best: open_clip whole-model torch.compile, ours per layer and whole step
        runs["open_clip_compiled"] = lambda: run_open_clip(data, args, compiled=True)
        for mode in compile_modes:
            runs[f"ours_{mode}"] = lambda mode=mode: run_ours(data, args, dynamic_padding=True, mode=mode)
    if args.fp8 != "none":
        for mode in args.fp8_compile.split(",") if args.compile else ["none"]:
            runs[f"ours_fp8_{mode}"] = lambda mode=mode: run_ours(data, args, dynamic_padding=True, mode=mode, fp8=args.fp8)
    times: dict[str, list[float]] = {name: [] for name in runs}
    breaks: dict[str, dict] = {}
    for _ in range(args.rounds):  # interleaved so load changes hit every run alike
        for name, run in runs.items():
            counters.clear()
            times[name] += run()
            if name not in breaks and ("compiled" in name or any(name.endswith(mode) for mode in compile_modes)):
                breaks[name] = speed.graph_break_report()  # first round: later rounds reuse the compiled code
    median = {k: statistics.median(v) for k, v in times.items()}
    device_name, peak = device_label(args.device)
    peak = args.peak_tflops or peak
    flops = {tokens: ours_step_flops(args, tokens) for tokens in (77, args.caption_tokens)}
    print(f"torch {torch.__version__} device={device_name} size={args.size} layers={towers(args)[0][1]}/{towers(args)[1][1]} "
          f"precision={args.precision} batch={args.batch} steps={args.steps}x{args.rounds} caption_tokens<={args.caption_tokens} "
          f"attention={args.attention} peak_bf16={peak} TFLOP/s; open_clip compile flags: {' '.join(open_clip_compile_flags())}")
    for name, value in median.items():
        tokens = 77 if name in ("open_clip", "open_clip_compiled", "ours_pad77") else args.caption_tokens
        print(f"  {name:18s} {value * 1000:9.1f} ms/step  {args.batch / value:8.1f} samples/s  {mfu_text(flops[tokens], value, peak)}")
    for name, report in breaks.items():
        print(f"  dynamo, {name}: graphs {report['graphs']}, graph breaks {report['graph_breaks']} {report['reasons'] or ''}")
    print(f"throughput ours / open_clip (same 77-token batch)  = {median['open_clip'] / median['ours_pad77']:.3f}x")
    print(f"throughput ours / open_clip (our dynamic padding)  = {median['open_clip'] / median['ours_dynamic']:.3f}x")
    if args.compile:
        ours = {name: value for name, value in median.items() if name.startswith("ours")}
        best = min(ours, key=ours.get)
        for name in [n for n in ours if n not in ("ours_pad77", "ours_dynamic")]:
            print(f"throughput {name} / open_clip compiled  = {median['open_clip_compiled'] / median[name]:.3f}x")
        print(f"best: ours ({best}) / open_clip at its best (compiled) = {min(median['open_clip'], median['open_clip_compiled']) / ours[best]:.3f}x"
              "  (goal >= 1.3x)")


def ours_step_flops(args: argparse.Namespace, text_tokens: int) -> int:
    """Forward + backward FLOPs of our stage-0 step (the same architecture as the open_clip model) at this text length."""
    from transformers import CLIPConfig, CLIPModel

    from reasonclip_llava.encoder.modeling import ReasonCLIPForPretraining
    from reasonclip_llava.pretrain.config import StageConfig
    from reasonclip_llava.pretrain.objective import StageObjective

    config = clip_config(args)
    with torch.device("meta"):
        objective = StageObjective(ReasonCLIPForPretraining(CLIPModel(CLIPConfig(**config))), StageConfig(name="stage0"), 100, math.log(100))
    image = towers(args)[0][4]
    batch = {"pixel_values": torch.zeros(args.batch, 3, image, image, device="meta"),
             "desc_input_ids": torch.zeros(args.batch, text_tokens, dtype=torch.long, device="meta")}
    return speed.training_step_flops(objective, batch)


if __name__ == "__main__":
    main()
