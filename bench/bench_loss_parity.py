"""Loss parity of the speed options: FP8 and `step`-compiled training against bf16 eager, same batches, 200 steps.

    python bench/bench_loss_parity.py --size l14-336 --layers 6 --batch 32 --device cuda --precision bf16 \
        --modes eager,step,fp8-tensorwise-step --steps 200          # a GPU row (FP8 needs compute capability >= 8.9)
    python bench/bench_loss_parity.py --layers 1 --batch 4 --steps 6 --modes eager,step --compile-backend aot_eager   # CPU proof

Each mode trains the same random-init CLIP (stage-0 contrastive step of bench_pretrain_steps.Step: StageObjective
+ the trainer's fused AdamW, lr 1e-4) from the same weights on the same `--distinct-batches` synthetic batches in
the same order (cycled, so the loss falls as the model memorises them). Mode names: eager | regional | step,
optionally prefixed fp8-tensorwise- / fp8-rowwise-. Reported per mode: the mean loss over the last quarter of the
steps against eager's, and the largest per-step difference. Pass: the last-quarter mean within `--tolerance`
(relative, default 3%) of eager's; float8 rounds every GEMM input to 3 mantissa bits (e4m3), so trajectories
differ step by step while the mean must not drift. Then the last mode's weights are saved as a training checkpoint,
exported (`reasonclip export`) and checked with `verify` against the base: they are plain CLIP weights again.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import CLIPImageProcessor

from bench_pretrain_steps import SIGLIP_SIZES, SIZES, Step, build_base, make_batch
from reasonclip_llava.encoder.export import export_encoder
from reasonclip_llava.encoder.verify import verify_export
from reasonclip_llava.pretrain import speed
from reasonclip_llava.pretrain.config import StageConfig


def parse_mode(mode: str) -> tuple[str, str]:
    """'fp8-tensorwise-step' -> ('tensorwise', 'step'); 'eager' -> ('none', 'none')."""
    fp8, compile_mode = "none", mode
    if mode.startswith("fp8-"):
        _, fp8, compile_mode = mode.split("-", 2)
    return fp8, "none" if compile_mode == "eager" else compile_mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(set(SIZES) - SIGLIP_SIZES), default="b32", help="a CLIP shape")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--caption-tokens", type=int, default=24)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--distinct-batches", type=int, default=8)
    parser.add_argument("--modes", default="eager,step,fp8-tensorwise-step")
    parser.add_argument("--tolerance", type=float, default=0.03, help="relative, on the last-quarter mean loss")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile_backend:
        speed.COMPILE_OPTIONS["backend"] = args.compile_backend
    modes = args.modes.split(",")
    if modes[0] != "eager":
        raise SystemExit("--modes must start with eager (the reference)")
    torch.manual_seed(0)
    base = build_base(args.size, args.layers)
    image_size = base.config.vision_config.image_size
    batches = []
    for index in range(args.distinct_batches):
        torch.manual_seed(index)
        batch = make_batch(args.batch, args.caption_tokens, 0, args.device, image_size)
        g = torch.Generator().manual_seed(1000 + index)  # make_batch's generator is fixed: vary pixels and captions here
        batch["pixel_values"] = torch.randn(batch["pixel_values"].shape, generator=g).to(args.device)
        ids = torch.randint(1000, 40000, batch["desc_input_ids"].shape, generator=g)
        ids[:, 0], ids[:, -1] = 49406, 49407
        batch["desc_input_ids"] = ids.to(args.device)
        batches.append(batch)
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    losses: dict[str, list[float]] = {}
    last_step = None
    for mode in modes:
        fp8, compile_mode = parse_mode(mode)
        if fp8 != "none" and (reason := speed.fp8_unsupported_reason(torch.device(args.device))):
            print(f"  {mode:24s} skipped: float8 needs compute capability >= 8.9 ({reason})")
            continue
        torch._dynamo.reset()
        torch.manual_seed(0)
        step = Step(base, StageConfig(name="stage0"), args.device, autocast_dtype=autocast, compile_mode=compile_mode, fp8=fp8, lr=args.lr)
        trajectory = []
        for index in range(args.steps):
            step(batches[index % len(batches)])
            trajectory.append(step.last_loss)
        losses[mode] = trajectory
        last_step = step

    quarter = max(1, args.steps // 4)
    reference = losses["eager"]
    ref_mean = sum(reference[-quarter:]) / quarter
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"device={device_name} torch={torch.__version__} size={args.size} layers={args.layers} batch={args.batch} steps={args.steps} "
          f"distinct_batches={args.distinct_batches} precision={args.precision} lr={args.lr} tolerance={args.tolerance:.0%}")
    print(f"  {'eager':24s} loss {reference[0]:.4f} -> {reference[-1]:.4f}; last-quarter mean {ref_mean:.4f} (reference)")
    failed = []
    for mode, trajectory in losses.items():
        if mode == "eager":
            continue
        mean = sum(trajectory[-quarter:]) / quarter
        worst = max(abs(a - b) for a, b in zip(trajectory, reference))
        relative = abs(mean - ref_mean) / ref_mean
        ok = relative <= args.tolerance
        failed += [] if ok else [mode]
        print(f"  {mode:24s} loss {trajectory[0]:.4f} -> {trajectory[-1]:.4f}; last-quarter mean {mean:.4f} ({relative:.2%} from eager); "
              f"max per-step |diff| {worst:.4f}  {'PASS' if ok else 'FAIL'}")

    work = Path(tempfile.mkdtemp(prefix="bench_parity_"))
    base.save_pretrained(work / "base")
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(work / "base")
    last_step.encoder.to("cpu").save_pretrained(work / "checkpoint", source=work / "base")
    report = verify_export(export_encoder(work / "checkpoint", work / "export"), work / "base")
    print(f"verify of the exported weights after '{list(losses)[-1]}': {'ok' if report['ok'] else 'FAILED ' + str(report['failed'])}")
    if failed or not report["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
