"""Inference parity of LLaVA-NeXT with the stock CLIP tower vs a ReasonCLIP tower (same architecture).

A ReasonCLIP encoder only changes weights, so a LLaVA-NeXT built on it must cost exactly what the stock
one costs: same parameter count, same FLOPs, latency ratio 1.00 +- 2%. Two parts:

  tiny  -- two real models (stock = tiny CLIP seed 0, ReasonCLIP = the same LLaVA with a seed-1 tower swapped
           in), parameter count, FLOPs of one forward (FlopCounterMode), forward and generate latency
           (medians of interleaved repeats, so machine drift hits both sides alike);
  real  -- meta-device models at published size: CLIP ViT-L/14-336 tower + a Qwen3-1.7B-shaped LM; the stock
           side uses transformers' default LlavaNext vision config, the ReasonCLIP side the vision config
           `build_llava_next` derives from a CLIPModel (ReasonCLIP export) config. Parameter counts and
           vision-tower FLOPs for a 5-tile anyres image.

    python bench/bench_llava_parity.py [--repeats 200] [--generate-repeats 40] [--new-tokens 8] [--device cpu]
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
from transformers import (
    CLIPConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    Qwen3Config,
)

from reasonclip_llava.encoder.tower import load_vision_config
from reasonclip_llava.llava_next.build import build_llava_next, save_llava_next
from reasonclip_llava.llava_next.swap import swap_vision_tower
from reasonclip_llava.llava_next.tiny_lm import build_tiny_lm
from reasonclip_llava.tiny import save_tiny_clip

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


def tiny_pair(workdir: Path, device: str):
    lm = build_tiny_lm(workdir / "lm", family="qwen2")
    stock_encoder = save_tiny_clip(workdir / "clip")
    reasonclip_encoder = save_tiny_clip(workdir / "reasonclip", seed=1)
    model, processor = build_llava_next(lm, stock_encoder)
    stock_dir = save_llava_next(model, processor, workdir / "llava-clip")
    reasonclip_dir = swap_vision_tower(stock_dir, reasonclip_encoder, workdir / "llava-reasonclip")
    load = lambda d: LlavaNextForConditionalGeneration.from_pretrained(d).to(device).eval()  # noqa: E731
    return load(stock_dir), load(reasonclip_dir), LlavaNextProcessor.from_pretrained(stock_dir)


def real_size_configs() -> dict[str, LlavaNextConfig]:
    text_config = Qwen3Config(**QWEN3_1_7B)
    with tempfile.TemporaryDirectory() as directory:
        CLIPConfig(text_config=CLIP_L14_TEXT, vision_config=CLIP_L14_336_VISION, projection_dim=768).save_pretrained(directory)
        reasonclip_vision = load_vision_config(directory)  # what build_llava_next reads from a ReasonCLIP export
    return {
        "stock CLIP-L/14-336": LlavaNextConfig(text_config=text_config, image_token_index=151936, tie_word_embeddings=True),
        "ReasonCLIP-L/14-336": LlavaNextConfig(vision_config=reasonclip_vision, text_config=text_config,
                                               image_token_index=151936, tie_word_embeddings=True),
    }


def real_size_meta() -> dict[str, dict[str, int]]:
    results = {}
    for name, config in real_size_configs().items():
        with torch.device("meta"):
            model = LlavaNextForConditionalGeneration(config)
            tiles = torch.empty(5, 3, 336, 336)  # anyres: base image + 2x2 grid
            tower_flops = forward_flops(lambda: model.model.vision_tower(tiles, output_hidden_states=True))
        results[name] = dict(
            total=count_parameters(model),
            tower=count_parameters(model.model.vision_tower),
            projector=count_parameters(model.model.multi_modal_projector),
            lm=count_parameters(model.model.language_model) + (0 if config.tie_word_embeddings else count_parameters(model.lm_head)),
            tower_gflops=tower_flops / 1e9,
        )
    return results


def real_size_latency(device: str, repeats: int, prompt_tokens: int = 64) -> dict[str, float]:
    """Forward latency (ms) of both real-size models, random bf16 weights, one 672x672 image (5 anyres tiles)."""
    results, models = {}, {}
    for name, config in real_size_configs().items():
        # The image token must index a real embedding row (llava-hf checkpoints add it to the vocabulary);
        # the meta configs keep the LM's own vocabulary so the parameter counts are the published ones.
        config.image_token_index = config.text_config.vocab_size - 1
        torch.manual_seed(0)
        with torch.device(device):
            models[name] = LlavaNextForConditionalGeneration(config).to(torch.bfloat16).eval()
    config = next(iter(models.values())).config
    pixel_values = torch.randn(1, 5, 3, 336, 336, device=device, dtype=torch.bfloat16)
    image_sizes = torch.tensor([[672, 672]], device=device)
    with torch.inference_mode():  # how many image tokens the anyres packing makes (base + 2x2 grid + row newlines)
        features = next(iter(models.values())).model.get_image_features(pixel_values, image_sizes)
    features = getattr(features, "pooler_output", features)
    image_tokens = sum(f.shape[0] for f in features)
    input_ids = torch.randint(0, config.image_token_index, (1, image_tokens + prompt_tokens), device=device)
    input_ids[0, 8 : 8 + image_tokens] = config.image_token_index
    fns = {name: (lambda m=m: m(input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes, use_cache=False))
           for name, m in models.items()}
    names = list(fns)
    a, b = interleaved_medians(fns[names[0]], fns[names[1]], repeats, device)
    results = {names[0]: a * 1e3, names[1]: b * 1e3, "tokens": image_tokens + prompt_tokens}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
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

    with tempfile.TemporaryDirectory() as directory:
        stock, reasonclip, processor = tiny_pair(Path(directory), args.device)
    image = Image.new("RGB", (90, 50), (220, 30, 30))
    inputs = processor(images=image, text="<image>\nWhat colour is the square?", return_tensors="pt").to(args.device)

    forward = {name: (lambda m=model: m(**inputs)) for name, model in (("stock", stock), ("reasonclip", reasonclip))}
    generate = {name: (lambda m=model: m.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                                    do_sample=False))
                for name, model in (("stock", stock), ("reasonclip", reasonclip))}
    flops = {name: forward_flops(fn) for name, fn in forward.items()}
    fwd_stock, fwd_reason = interleaved_medians(forward["stock"], forward["reasonclip"], args.repeats, args.device)
    gen_stock, gen_reason = interleaved_medians(generate["stock"], generate["reasonclip"], args.generate_repeats, args.device)

    threads = torch.get_num_threads()
    print(f"LLaVA-NeXT parity, tiny models, device={args.device} threads={threads} "
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

    print("\nReal size on the meta device (Qwen3-1.7B-shaped LM, tied embeddings; tower FLOPs for 5 anyres tiles)")
    results = real_size_meta()
    names = list(results)
    print(f"{'':28}{names[0]:>22}{names[1]:>22}{'equal':>8}")
    for key, label in (("total", "parameters, total"), ("tower", "  vision tower"), ("projector", "  projector"),
                       ("lm", "  language model"), ("tower_gflops", "tower GFLOPs")):
        a, b = results[names[0]][key], results[names[1]][key]
        fmt = "{:>22,.1f}" if key == "tower_gflops" else "{:>22,}"
        print(f"{label:28}" + fmt.format(a) + fmt.format(b) + f"{str(a == b):>8}")

    if args.real_size_latency:
        latency = real_size_latency(args.device, args.real_size_repeats)
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        print(f"\nReal size, bf16 random weights, {device_name}: one forward over {latency.pop('tokens')} tokens (5 anyres tiles)")
        (name_a, a), (name_b, b) = latency.items()
        print(f"{'forward median (ms)':28}{a:>22.2f}{b:>22.2f}{b / a:>8.4f}")


if __name__ == "__main__":
    main()
