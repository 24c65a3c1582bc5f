"""Where one training step's time goes: a torch.profiler table for one stage variant of bench_pretrain_steps.

    python bench/profile_step.py --variant read --size l14-336 --layers 24 --t5-layers 24 --batch 32 \\
        --device cuda --precision bf16
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench_pretrain_steps import SIZES, Step, build_base, make_batch, stage_variants, t5_large_decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="read")
    parser.add_argument("--size", choices=sorted(SIZES), default="b32")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--t5-layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--caption-tokens", type=int, default=24)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = build_base(args.size, args.layers)
    stage, needs_t5 = stage_variants()[args.variant]
    t5 = t5_large_decoder(args.t5_layers).to(torch.bfloat16 if args.precision == "bf16" else torch.float32) if needs_t5 else None
    step = Step(base, stage, args.device, t5=t5,
                autocast_dtype=torch.bfloat16 if args.precision == "bf16" else None)
    batch = make_batch(args.batch, args.caption_tokens, 3, args.device, base.config.vision_config.image_size)
    for _ in range(3):
        step(batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step(batch)
    sort = "cuda_time_total" if args.device.startswith("cuda") else "cpu_time_total"
    print(f"{args.variant}: median of 3 steps {sorted(step(batch) for _ in range(3))[1] * 1e3:.1f} ms")
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
