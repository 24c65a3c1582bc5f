"""Inference parity: ReasonCLIP tower vs transformers' stock CLIPVisionModel on the same weights.

Both run the same forward (hidden states out, select layer -2, CLS dropped); the ratio should be
1.00 +- 2%. Timings are medians of interleaved repeats so drift hits both sides equally.

    python bench/bench_tower_parity.py                       # tiny-ish ViT-B/16-shaped tower on CPU
    python bench/bench_tower_parity.py --size l14-336 --device cuda --dtype bfloat16 --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from reasonclip_llava.encoder import ReasonCLIPVisionTower

SIZES = {
    "b16-small": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6, image_size=224, patch_size=16),
    "b32": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=32),
    "l14-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="b16-small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        CLIPVisionModel(CLIPVisionConfig(**SIZES[args.size])).save_pretrained(directory)
        from transformers import CLIPImageProcessor

        CLIPImageProcessor().save_pretrained(directory)
        stock = CLIPVisionModel.from_pretrained(directory, dtype=dtype).to(args.device).eval()
        tower = ReasonCLIPVisionTower(directory, SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch"))
        tower.vision_tower.to(device=args.device, dtype=dtype).eval()

    size = SIZES[args.size]["image_size"]
    images = torch.randn(args.batch, 3, size, size, device=args.device, dtype=dtype)

    def run_stock() -> torch.Tensor:
        return stock(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:]

    def run_tower() -> torch.Tensor:
        return tower(images)

    def timed(fn) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        assert torch.equal(run_stock(), run_tower()), "tower features differ from CLIPVisionModel"
        for _ in range(3):
            run_stock(), run_tower()
        stock_times, tower_times = [], []
        for i in range(args.repeats):
            order = (run_stock, run_tower) if i % 2 == 0 else (run_tower, run_stock)
            for fn in order:
                (stock_times if fn is run_stock else tower_times).append(timed(fn))

    stock_ms, tower_ms = statistics.median(stock_times) * 1e3, statistics.median(tower_times) * 1e3
    print(f"device={args.device} dtype={args.dtype} size={args.size} batch={args.batch} repeats={args.repeats}")
    print(f"stock CLIPVisionModel   median {stock_ms:8.2f} ms")
    print(f"ReasonCLIPVisionTower   median {tower_ms:8.2f} ms")
    print(f"ratio tower/stock       {tower_ms / stock_ms:8.3f}  (goal 1.00 +- 0.02)")


if __name__ == "__main__":
    main()
