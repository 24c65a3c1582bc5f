"""Cost of the stage objectives relative to their plain baselines, one full training step each.

    python bench/bench_pretrain_steps.py                       # ViT-B/32-shaped CLIP, 2 layers per tower
    python bench/bench_pretrain_steps.py --layers 12 --batch 64 --device cuda
    python bench/bench_pretrain_steps.py --size l14-336 --layers 24 --t5-layers 24 --batch 32 \
        --device cuda --precision bf16 --sequential            # published ViT-L/14-336 + T5-v1.1-large

Steps compared (forward + backward + AdamW step + zero_grad, through `StageObjective`, i.e. exactly
what the trainer runs; `--precision bf16` runs the forward under bf16 autocast over fp32 weights, as
the trainer's `runtime.mixed_precision=bf16` does), on one random-init CLIP built from a config shaped
like ViT-B/32 (vision 768 wide, patch 32, 224 px; text 512 wide, vocabulary 49408; 512-d joint space) or,
with `--size l14-336`, like ViT-L/14-336 (vision 1024 wide, patch 14, 336 px; text 768 wide; 768-d),
with `--layers` layers per tower (12 is B/32's real depth, 24 L/14's vision depth; the text tower keeps
at most 12; fewer keep a CPU run short):

    stage-1 step (two caption streams + L2 anchor)       vs  plain contrastive step      goal <= 1.15x
    READ step (hard negatives + T5 recon + alignment)    vs  hard-negative contrastive   goal <= 1.30x

READ's frozen decoder is shaped like t5-v1_1-large (width 1024, ff 2816, 16 heads, 32128 tokens) with
`--t5-layers` layers (24 is the real depth; the default keeps the depth ratio to the CLIP towers).
Captions are `--caption-tokens` long (the collator pads to the longest caption of the batch; ReasonLite
captions are <= 30 words). Timings are medians of interleaved repeats (`--sequential`: each variant
built, timed and freed in turn, for GPU memory at real size); nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from transformers import CLIPConfig, CLIPModel, T5Config, T5ForConditionalGeneration

from reasonclip_llava.encoder.modeling import HeadsConfig, ReasonCLIPForPretraining
from reasonclip_llava.pretrain.config import OptimConfig, StageConfig
from reasonclip_llava.pretrain.objective import StageObjective
from reasonclip_llava.pretrain.trainer import build_optimizer, compile_repeated_layers


SIZES = {  # (vision tower, text tower width / ff / heads, joint dim)
    "b32": (dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, image_size=224, patch_size=32), (512, 2048, 8), 512),
    "l14-336": (dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, image_size=336, patch_size=14), (768, 3072, 12), 768),
}


def clip_config(size: str, layers: int) -> CLIPConfig:
    vision, (width, ff, heads), joint = SIZES[size]
    vision = dict(vision, num_hidden_layers=layers, hidden_act="quick_gelu")
    text = dict(hidden_size=width, intermediate_size=ff, num_attention_heads=heads, num_hidden_layers=min(layers, 12), vocab_size=49408,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu")
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=joint)


def t5_large_decoder(layers: int) -> T5ForConditionalGeneration:
    config = T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=1, num_decoder_layers=layers, num_heads=16,
                      feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    model = T5ForConditionalGeneration(config)
    model.encoder = None  # only the decoder runs (as in the trainer)
    return model.requires_grad_(False).eval()


def caption_ids(batch: int, tokens: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, 40000, (batch, tokens), generator=generator)
    ids[:, 0], ids[:, -1] = 49406, 49407  # <start> ... <end>: CLIP pools at the first <end>
    return ids, torch.ones_like(ids)


def make_batch(batch: int, tokens: int, k: int, device: str, image_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {"pixel_values": torch.randn(batch, 3, image_size, image_size, generator=g)}
    for name, rows in (("desc", batch), ("reason", batch), ("caption", batch), ("paraphrase", batch), ("neg", batch * k)):
        out[f"{name}_input_ids"], out[f"{name}_attention_mask"] = caption_ids(rows, tokens, g)
    recon = torch.randint(3, 32128, (batch, tokens), generator=g)
    out["recon_labels"], out["recon_attention_mask"] = recon, torch.ones_like(recon)
    return {key: value.to(device) for key, value in out.items()}


class Step:
    """One configured training step: objective + AdamW over the configured parameter groups."""

    def __init__(self, base: CLIPModel, stage: StageConfig, device: str, t5: T5ForConditionalGeneration | None = None,
                 autocast_dtype: torch.dtype | None = None, compile_layers: bool = False):
        heads = HeadsConfig(recon_dim=t5.config.d_model if t5 is not None else None)
        model = CLIPModel(base.config)
        model.load_state_dict(base.state_dict())
        self.encoder = ReasonCLIPForPretraining(model, heads)
        if compile_layers:  # what the trainer does with model.torch_compile=true
            compile_repeated_layers(self.encoder.backbone)
        self.objective = StageObjective(self.encoder, stage, max_steps=100, logit_scale_max=math.log(50), t5=t5).to(device)
        self.optimizer = build_optimizer(self.encoder, OptimConfig(lr=1e-5))  # the trainer's optimizer
        self.device = device
        self.autocast_dtype = autocast_dtype

    def __call__(self, batch: dict[str, torch.Tensor]) -> float:
        sync = torch.cuda.synchronize if self.device.startswith("cuda") else (lambda: None)
        sync()
        start = time.perf_counter()
        with torch.autocast(self.device.split(":")[0], dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            loss, _ = self.objective(batch, step=50)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start


def stage_variants() -> dict[str, tuple[StageConfig, bool]]:
    """name -> (stage config, whether it runs the frozen T5 decoder)."""
    return {
        "plain": (StageConfig(name="stage0"), False),
        "stage1": (StageConfig(name="stage1"), False),
        "stage1_no_anchor": (StageConfig(name="stage1", anchor_beta=0.0), False),  # where the cost goes
        "hard_negatives": (StageConfig(name="stage0", hard_negatives=3), False),
        "read": (StageConfig(name="read", hard_negatives=3), True),
        "read_no_recon": (StageConfig(name="read", hard_negatives=3, recon_weight=0.0), False),  # where the cost goes
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="b32", help="CLIP shape (widths, patch, resolution)")
    parser.add_argument("--layers", type=int, default=2, help="layers per CLIP tower (ViT-B/32 has 12, ViT-L/14 24)")
    parser.add_argument("--t5-layers", type=int, default=None, help="T5 decoder layers (t5-v1_1-large has 24; default 2 x --layers)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--caption-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast over fp32 weights")
    parser.add_argument("--sequential", action="store_true", help="build, time and free one variant at a time")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="model.torch_compile=true: compiled layers (CLIP and T5)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = CLIPModel(clip_config(args.size, args.layers))
    t5_layers = args.t5_layers or 2 * args.layers
    t5 = t5_large_decoder(t5_layers)
    if args.precision == "bf16":
        t5.to(torch.bfloat16)  # as the trainer holds the frozen decoder under runtime.mixed_precision=bf16
    if args.compile:
        compile_repeated_layers(t5.decoder)
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    variants = stage_variants()
    build = lambda name: Step(base, variants[name][0], args.device, t5=t5 if variants[name][1] else None, autocast_dtype=autocast,  # noqa: E731
                         compile_layers=args.compile)
    batch = make_batch(args.batch, args.caption_tokens, 3, args.device, base.config.vision_config.image_size)
    times: dict[str, list[float]] = {name: [] for name in variants}
    if args.sequential:
        for name in variants:
            step = build(name)
            step(batch)  # warm-up (allocator, AdamW state)
            times[name] = [step(batch) for _ in range(args.repeats)]
            del step
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    else:
        steps = {name: build(name) for name in variants}
        for step in steps.values():  # warm-up (allocator, AdamW state)
            step(batch)
        for _ in range(args.repeats):
            for name, step in steps.items():  # interleaved, so load changes hit every variant alike
                times[name].append(step(batch))
    median = {name: statistics.median(values) for name, values in times.items()}
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"device={device_name} torch={torch.__version__} size={args.size} layers={args.layers} t5_layers={t5_layers} "
          f"precision={args.precision} compile={args.compile} batch={args.batch} caption_tokens={args.caption_tokens} repeats={args.repeats}")
    for name, value in median.items():
        print(f"  {name:17s} {value * 1000:9.1f} ms/step")
    print(f"stage-1 / plain contrastive          = {median['stage1'] / median['plain']:.3f}x  (goal <= 1.15x)")
    print(f"  of which two streams (no anchor)   = {median['stage1_no_anchor'] / median['plain']:.3f}x; the L2 anchor costs "
          f"{(median['stage1'] - median['stage1_no_anchor']) * 1000:.0f} ms/step, O(parameters), independent of the batch")
    print(f"READ / hard-negative contrastive     = {median['read'] / median['hard_negatives']:.3f}x  (goal <= 1.30x)")
    print(f"  of which paraphrase alignment      = {median['read_no_recon'] / median['hard_negatives']:.3f}x; the frozen T5 decoder "
          f"(forward + input gradient) costs {(median['read'] - median['read_no_recon']) * 1000:.0f} ms/step")


if __name__ == "__main__":
    main()
