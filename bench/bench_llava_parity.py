"""Inference parity of a LLaVA with the stock CLIP tower vs a ReasonCLIP tower (same architecture), for both
architectures: LLaVA-NeXT (anyres) and the LLaVA-1.5 format ReasonCLIP published (one tile, 576 tokens).

A ReasonCLIP encoder only changes weights, so a LLaVA built on it must cost exactly what the stock
one costs: same parameter count, same FLOPs, latency ratio 1.00 +- 2%. Two parts, per architecture:

  tiny  -- two real models (stock = tiny CLIP seed 0, ReasonCLIP = the same LLaVA with a seed-1 tower swapped
           in), parameter count, FLOPs of one forward (FlopCounterMode), forward and generate latency
           (medians of interleaved repeats, so machine drift hits both sides alike);
  real  -- meta-device models at published size: CLIP ViT-L/14-336 tower + a Qwen3-1.7B-shaped LM; the stock
           side uses transformers' default LlavaNext vision config, the ReasonCLIP side the vision config
           `build_llava` derives from a CLIPModel (ReasonCLIP export) config. Parameter counts and
           vision-tower FLOPs for one image (5 anyres tiles for llava_next, one 336 px tile for llava).

    python bench/bench_llava_parity.py [--arch llava_next llava] [--repeats 200] [--generate-repeats 40] [--device cpu]
    python bench/bench_llava_parity.py --device cuda --real-size-latency   # + real-size bf16 forward latency
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPConfig, PretrainedConfig, Qwen3Config

from reasonclip_llava.encoder.tower import load_vision_config
from reasonclip_llava.vlm.architectures import ARCHITECTURES, get_architecture, load_llava
from reasonclip_llava.vlm.build import build_llava, save_llava
from reasonclip_llava.vlm.swap import swap_vision_tower
from reasonclip_llava.testing.tiny_lm import build_tiny_lm
from reasonclip_llava.testing.tiny import save_tiny_clip

# Qwen3-1.7B's published shape (tied embeddings).
QWEN3_1_7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                  max_position_embeddings=40960)
CLIP_L14_336_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14, hidden_act="quick_gelu", projection_dim=768)
CLIP_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


def interleaved_medians(fn_a, fn_b, repeats: int, device: str) -> tuple[float, float]:
    """Median seconds of fn_a and fn_b, alternating which goes first."""
    def timed(fn) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times = {fn_a: [], fn_b: []}
    with torch.inference_mode():
        for _ in range(3):
            fn_a(), fn_b()
        for i in range(repeats):
            for fn in ((fn_a, fn_b) if i % 2 == 0 else (fn_b, fn_a)):
                times[fn].append(timed(fn))
    return statistics.median(times[fn_a]), statistics.median(times[fn_b])


def tiny_pair(workdir: Path, device: str, arch: str):
    lm = build_tiny_lm(workdir / "lm", family="qwen2")
    stock_encoder = save_tiny_clip(workdir / "clip")
    reasonclip_encoder = save_tiny_clip(workdir / "reasonclip", seed=1)
    model, processor = build_llava(lm, stock_encoder, arch=arch)
    stock_dir = save_llava(model, processor, workdir / f"{arch}-clip")
    reasonclip_dir = swap_vision_tower(stock_dir, reasonclip_encoder, workdir / f"{arch}-reasonclip")
    (stock, processor), (reasonclip, _) = load_llava(stock_dir), load_llava(reasonclip_dir)
    return stock.to(device).eval(), reasonclip.to(device).eval(), processor


# One image at real size: LLaVA-NeXT's base + 2x2 anyres grid (672 x 672), or LLaVA-1.5's single 336 px tile.
REAL_SIZE_IMAGE = {"llava_next": dict(tiles=5, image_size=672), "llava": dict(tiles=1, image_size=336)}


def real_size_configs(arch: str) -> dict[str, PretrainedConfig]:
    config_class = get_architecture(arch).config_class
    text_config = Qwen3Config(**QWEN3_1_7B)
    with tempfile.TemporaryDirectory() as directory:
        CLIPConfig(text_config=CLIP_L14_TEXT, vision_config=CLIP_L14_336_VISION, projection_dim=768).save_pretrained(directory)
        reasonclip_vision = load_vision_config(directory)  # what build_llava reads from a ReasonCLIP export
    return {
        "stock CLIP-L/14-336": config_class(text_config=text_config, image_token_index=151936, tie_word_embeddings=True),
        "ReasonCLIP-L/14-336": config_class(vision_config=reasonclip_vision, text_config=text_config,
                                            image_token_index=151936, tie_word_embeddings=True),
    }


def pixel_inputs(arch: str, device: str | torch.device, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Model image inputs for the real-size image (LlavaNext takes image_sizes, Llava none)."""
    tiles = REAL_SIZE_IMAGE[arch]["tiles"]
    if get_architecture(arch).has_image_newline:
        size = REAL_SIZE_IMAGE[arch]["image_size"]
        return dict(pixel_values=torch.randn(1, tiles, 3, 336, 336, device=device, dtype=dtype),
                    image_sizes=torch.tensor([[size, size]], device=device))
    return dict(pixel_values=torch.randn(1, 3, 336, 336, device=device, dtype=dtype))


def real_size_meta(arch: str) -> dict[str, dict[str, int]]:
    results = {}
    for name, config in real_size_configs(arch).items():
        with torch.device("meta"):
            model = get_architecture(arch).model_class(config)
            tiles = torch.empty(REAL_SIZE_IMAGE[arch]["tiles"], 3, 336, 336)
            tower_flops = forward_flops(lambda: model.model.vision_tower(tiles, output_hidden_states=True))
        results[name] = dict(
            total=count_parameters(model),
            tower=count_parameters(model.model.vision_tower),
            projector=count_parameters(model.model.multi_modal_projector),
            lm=count_parameters(model.model.language_model) + (0 if config.tie_word_embeddings else count_parameters(model.lm_head)),
            tower_gflops=tower_flops / 1e9,
        )
    return results


def real_size_latency(arch: str, device: str, repeats: int, prompt_tokens: int = 64) -> dict[str, float]:
    """Forward latency (ms) of both real-size models, random bf16 weights, one image (see REAL_SIZE_IMAGE)."""
    results, models = {}, {}
    for name, config in real_size_configs(arch).items():
        # The image token must index a real embedding row (llava-hf checkpoints add it to the vocabulary);
        # the meta configs keep the LM's own vocabulary so the parameter counts are the published ones.
        config.image_token_index = config.text_config.vocab_size - 1
        torch.manual_seed(0)
        with torch.device(device):
            models[name] = get_architecture(arch).model_class(config).to(torch.bfloat16).eval()
    config = next(iter(models.values())).config
    images = pixel_inputs(arch, device, torch.bfloat16)
    with torch.inference_mode():  # how many image tokens the model makes of it (anyres: + row newlines)
        features = next(iter(models.values())).model.get_image_features(**images)
    features = getattr(features, "pooler_output", features)
    image_tokens = sum(f.shape[0] for f in features) if isinstance(features, (list, tuple)) else features.shape[0] * features.shape[1]
    input_ids = torch.randint(0, config.image_token_index, (1, image_tokens + prompt_tokens), device=device)
    input_ids[0, 8 : 8 + image_tokens] = config.image_token_index
    fns = {name: (lambda m=m: m(input_ids=input_ids, use_cache=False, **images)) for name, m in models.items()}
    names = list(fns)
    a, b = interleaved_medians(fns[names[0]], fns[names[1]], repeats, device)
    results = {names[0]: a * 1e3, names[1]: b * 1e3, "tokens": image_tokens + prompt_tokens}
    return results


def bench_tiny(arch: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        stock, reasonclip, processor = tiny_pair(Path(directory), args.device, arch)
    image = Image.new("RGB", (90, 50), (220, 30, 30))
    inputs = processor(images=image, text="<image>\nWhat colour is the square?", return_tensors="pt").to(args.device)

    forward = {name: (lambda m=model: m(**inputs)) for name, model in (("stock", stock), ("reasonclip", reasonclip))}
    generate = {name: (lambda m=model: m.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                                    do_sample=False))
                for name, model in (("stock", stock), ("reasonclip", reasonclip))}
    flops = {name: forward_flops(fn) for name, fn in forward.items()}
    fwd_stock, fwd_reason = interleaved_medians(forward["stock"], forward["reasonclip"], args.repeats, args.device)
    gen_stock, gen_reason = interleaved_medians(generate["stock"], generate["reasonclip"], args.generate_repeats, args.device)

    print(f"\n[{arch}] {type(stock).__name__} parity, tiny models, device={args.device} threads={torch.get_num_threads()} "
          f"tokens={inputs['input_ids'].shape[1]} repeats={args.repeats}/{args.generate_repeats}")
    print(f"{'':28}{'stock CLIP':>16}{'ReasonCLIP':>16}{'ratio':>10}")
    rows = [
        ("parameters", count_parameters(stock), count_parameters(reasonclip), "{:>16,}"),
        ("forward FLOPs", flops["stock"], flops["reasonclip"], "{:>16,}"),
        ("forward median (ms)", fwd_stock * 1e3, fwd_reason * 1e3, "{:>16.3f}"),
        (f"generate {args.new_tokens} tok median (ms)", gen_stock * 1e3, gen_reason * 1e3, "{:>16.3f}"),
    ]
    for label, a, b, fmt in rows:
        print(f"{label:28}" + fmt.format(a) + fmt.format(b) + f"{b / a:>10.4f}")


def bench_real_size(arch: str, args: argparse.Namespace) -> None:
    tiles = REAL_SIZE_IMAGE[arch]["tiles"]
    print(f"\n[{arch}] real size on the meta device (Qwen3-1.7B-shaped LM, tied embeddings; tower FLOPs for {tiles} tile(s))")
    results = real_size_meta(arch)
    names = list(results)
    print(f"{'':28}{names[0]:>22}{names[1]:>22}{'equal':>8}")
    for key, label in (("total", "parameters, total"), ("tower", "  vision tower"), ("projector", "  projector"),
                       ("lm", "  language model"), ("tower_gflops", "tower GFLOPs")):
        a, b = results[names[0]][key], results[names[1]][key]
        fmt = "{:>22,.1f}" if key == "tower_gflops" else "{:>22,}"
        print(f"{label:28}" + fmt.format(a) + fmt.format(b) + f"{str(a == b):>8}")
    if args.real_size_latency:
        latency = real_size_latency(arch, args.device, args.real_size_repeats)
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        print(f"[{arch}] real size, bf16 random weights, {device_name}: one forward over {latency.pop('tokens')} tokens")
        (_, a), (_, b) = latency.items()
        print(f"{'forward median (ms)':28}{a:>22.2f}{b:>22.2f}{b / a:>8.4f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--generate-repeats", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads; 1 keeps shared machines steady")
    parser.add_argument("--real-size-latency", action="store_true",
                        help="also time both real-size models (bf16, random weights; needs a GPU with ~16 GB)")
    parser.add_argument("--real-size-repeats", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for arch in args.arch:
        bench_tiny(arch, args)
    for arch in args.arch:
        bench_real_size(arch, args)


if __name__ == "__main__":
    main()
