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

    stage-1 step (two caption streams + L2 anchor)       vs  plain contrastive step      goal <= 1.10x
    READ step (hard negatives + T5 recon + alignment)    vs  hard-negative contrastive   goal <= 1.15x

READ's frozen decoder is shaped like t5-v1_1-large (width 1024, ff 2816, 16 heads, 32128 tokens) with
`--t5-layers` layers (24 is the real depth; the default keeps the depth ratio to the CLIP towers).
Captions are `--caption-tokens` long (the collator pads to the longest caption of the batch; ReasonLite
captions are <= 30 words). Timings are medians of interleaved repeats (`--sequential`: each variant
built, timed and freed in turn, for GPU memory at real size); nothing is asserted.

Speed options (pretrain/speed.py), as the trainer applies them: `--compile-mode regional|step` (`--compile` =
regional), `--fp8 tensorwise|rowwise`, `--attention sdpa|cudnn|flash|auto`. Every row prints its FLOPs per step
(forward + backward, FlopCounterMode on a meta-device copy of the same step), achieved TFLOP/s and MFU against
the device's dense bf16 peak (`--peak-tflops` for a device not in pretrain/speed.py's table, e.g. a CPU; FP8
rows against the same bf16 peak); compiled rows print dynamo's graph breaks (with `--sequential`, per variant).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel, T5Config, T5ForConditionalGeneration

from reasonclip_llava.encoder.modeling import HeadsConfig, ReasonCLIPForPretraining
from reasonclip_llava.pretrain import speed
from reasonclip_llava.pretrain.config import OptimConfig, StageConfig
from reasonclip_llava.pretrain.objective import StageObjective
from reasonclip_llava.pretrain.trainer import build_optimizer, compile_repeated_layers


SIZES = {  # (vision tower, text tower width / ff / heads, joint dim)
    "b32": (dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, image_size=224, patch_size=32), (512, 2048, 8), 512),
    "l14-336": (dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, image_size=336, patch_size=14), (768, 3072, 12), 768),
    # SigLIP So400M/14-384 (google/siglip-so400m-patch14-384): both towers 1152 wide, MLP 4304, 27 layers; joint = width
    "so400m": (dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=384, patch_size=14), (1152, 4304, 16), 1152),
}
SIGLIP_SIZES = {"so400m"}  # sigmoid loss; no hard-negative / READ variants (they need the softmax loss)
SIGLIP_VOCAB = 32000


def build_base(size: str, layers: int) -> CLIPModel | SiglipModel:
    """The random-init dual encoder of this shape (`layers` per tower; the CLIP text tower keeps at most 12)."""
    return (SiglipModel if size in SIGLIP_SIZES else CLIPModel)(clip_config(size, layers))


def clip_config(size: str, layers: int) -> CLIPConfig | SiglipConfig:
    vision, (width, ff, heads), joint = SIZES[size]
    if size in SIGLIP_SIZES:
        tower = dict(hidden_size=width, intermediate_size=ff, num_attention_heads=heads, num_hidden_layers=layers)
        return SiglipConfig(vision_config=dict(vision, num_hidden_layers=layers),
                            text_config=dict(tower, vocab_size=SIGLIP_VOCAB, max_position_embeddings=64, pad_token_id=1, eos_token_id=1, bos_token_id=2))
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

    def __init__(self, base: CLIPModel | SiglipModel, stage: StageConfig, device: str, t5: T5ForConditionalGeneration | None = None,
                 autocast_dtype: torch.dtype | None = None, compile_mode: str = "none", fp8: str = "none", lr: float = 1e-5):
        heads = HeadsConfig(recon_dim=t5.config.d_model if t5 is not None else None)
        model = type(base)(base.config)
        model.load_state_dict(base.state_dict())
        self.encoder = ReasonCLIPForPretraining(model, heads)
        if fp8 != "none":  # what the trainer does with runtime.fp8 (before compiling)
            self.fp8_linears = speed.convert_to_fp8(self.encoder.backbone, fp8)
        if compile_mode == "regional":  # model.torch_compile=regional
            compile_repeated_layers(self.encoder.backbone, **speed.COMPILE_OPTIONS)
        self.objective = StageObjective(self.encoder, stage, max_steps=100, logit_scale_max=math.log(50), t5=t5).to(device)
        if compile_mode == "step":  # model.torch_compile=step
            speed.compile_step(self.objective)
        self.optimizer = build_optimizer(self.encoder, OptimConfig(lr=lr))  # the trainer's optimizer
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.last_loss = float("nan")

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
        elapsed = time.perf_counter() - start
        self.last_loss = loss.item()  # after the clock: the trainer's own .item() is its NaN check
        return elapsed


def step_flops(base: CLIPModel | SiglipModel, stage: StageConfig, batch: dict[str, torch.Tensor], t5_layers: int | None) -> int:
    """Forward + backward FLOPs of one `Step` of this variant, counted on a meta-device copy (nothing computed)."""
    with torch.device("meta"):
        t5 = t5_large_decoder(t5_layers) if t5_layers else None
        encoder = ReasonCLIPForPretraining(type(base)(base.config), HeadsConfig(recon_dim=t5.config.d_model if t5 is not None else None))
        objective = StageObjective(encoder, stage, max_steps=100, logit_scale_max=math.log(50), t5=t5)
    return speed.training_step_flops(objective, {k: v.to("meta") for k, v in batch.items()}, step=50)


def device_label(device: str) -> tuple[str, float | None]:
    """(device name, its dense bf16 peak in TFLOP/s or None)."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        return name, speed.peak_bf16_tflops(name)
    return f"cpu, {torch.get_num_threads()} threads", None


def mfu_text(flops: int, seconds: float, peak: float | None) -> str:
    achieved = flops / seconds / 1e12
    value = speed.mfu(flops, seconds, peak)
    return f"{flops / 1e12:8.3f} TFLOP/step {achieved:8.2f} TFLOP/s  MFU " + (f"{value * 100:5.1f}%" if value is not None else "n/a (no bf16 peak known: --peak-tflops)")


def graph_break_text() -> str:
    report = speed.graph_break_report()
    reasons = "; ".join(f"{n}x {reason[:80]}" for reason, n in report["reasons"].items())
    return f"graphs {report['graphs']}, graph breaks {report['graph_breaks']}" + (f" ({reasons})" if reasons else "")


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
    parser.add_argument("--compile", action="store_true", help="= --compile-mode regional (compiled layers, CLIP and T5)")
    parser.add_argument("--compile-mode", choices=speed.COMPILE_MODES, default=None, help="model.torch_compile")
    parser.add_argument("--fp8", choices=speed.FP8_RECIPES, default="none", help="runtime.fp8 (CUDA, compute capability >= 8.9)")
    parser.add_argument("--attention", choices=speed.ATTENTION_BACKENDS, default="sdpa", help="model.attention")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by device name)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; aot_eager for a CPU proof)")
    parser.add_argument("--variants", default=None, help="comma-separated subset of " + ",".join(stage_variants()))
    args = parser.parse_args()
    args.compile_mode = args.compile_mode or ("regional" if args.compile else "none")
    if args.compile_backend:
        speed.COMPILE_OPTIONS["backend"] = args.compile_backend
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fp8 != "none" and (reason := speed.fp8_unsupported_reason(torch.device(args.device))):
        raise SystemExit(f"--fp8 {args.fp8} needs a CUDA GPU of compute capability >= 8.9: {reason}")
    with speed.attention_backend(args.attention, torch.device(args.device)):
        run(args)


def run(args: argparse.Namespace) -> None:
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    base = build_base(args.size, args.layers)
    t5_layers = args.t5_layers or 2 * args.layers
    t5 = t5_large_decoder(t5_layers)
    if args.precision == "bf16":
        t5.to(torch.bfloat16)  # as the trainer holds the frozen decoder under runtime.mixed_precision=bf16
    if args.compile_mode == "regional":
        compile_repeated_layers(t5.decoder, **speed.COMPILE_OPTIONS)
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    variants = stage_variants()
    if args.variants or args.size in SIGLIP_SIZES:
        variants = {name: variants[name] for name in (args.variants or "plain,stage1,stage1_no_anchor").split(",")}
    build = lambda name: Step(base, variants[name][0], args.device, t5=t5 if variants[name][1] else None, autocast_dtype=autocast,  # noqa: E731
                         compile_mode=args.compile_mode, fp8=args.fp8)
    batch = make_batch(args.batch, args.caption_tokens, 3, args.device, base.config.vision_config.image_size)
    if args.size in SIGLIP_SIZES:  # SigLIP's vocabulary; it pools the last token, so no <start>/<end> needed
        batch = {k: v % SIGLIP_VOCAB if k.endswith("input_ids") else v for k, v in batch.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    breaks: dict[str, str] = {}
    # compile time falls in the warm-up steps (step mode: one compile per variant)
    warmup = 1 if args.compile_mode == "none" else 3
    if args.sequential:
        for name in variants:
            counters.clear()
            step = build(name)
            for _ in range(warmup):  # (allocator, AdamW state)
                step(batch)
            times[name] = [step(batch) for _ in range(args.repeats)]
            breaks[name] = graph_break_text()
            del step
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    else:
        steps = {name: build(name) for name in variants}
        for _ in range(warmup):
            for step in steps.values():  # warm-up (allocator, AdamW state)
                step(batch)
        for _ in range(args.repeats):
            for name, step in steps.items():  # interleaved, so load changes hit every variant alike
                times[name].append(step(batch))
        breaks = {"all variants": graph_break_text()}
    median = {name: statistics.median(values) for name, values in times.items()}
    device_name, peak = device_label(args.device)
    peak = args.peak_tflops or peak
    print(f"device={device_name} torch={torch.__version__} size={args.size} layers={args.layers} t5_layers={t5_layers} "
          f"precision={args.precision} compile={args.compile_mode} fp8={args.fp8} attention={args.attention} batch={args.batch} "
          f"caption_tokens={args.caption_tokens} repeats={args.repeats} peak_bf16={peak} TFLOP/s")
    for name, value in median.items():
        flops = step_flops(base, variants[name][0], batch, t5_layers if variants[name][1] else None)
        print(f"  {name:17s} {value * 1000:9.1f} ms/step  {mfu_text(flops, value, peak)}")
    if args.compile_mode != "none":
        for name, text in breaks.items():
            print(f"  dynamo, {name}: {text}")
    if not {"plain", "stage1", "stage1_no_anchor", "hard_negatives", "read", "read_no_recon"} <= set(median):
        return
    print(f"stage-1 / plain contrastive          = {median['stage1'] / median['plain']:.3f}x  (goal <= 1.10x)")
    print(f"  of which two streams (no anchor)   = {median['stage1_no_anchor'] / median['plain']:.3f}x; the L2 anchor costs "
          f"{(median['stage1'] - median['stage1_no_anchor']) * 1000:.0f} ms/step, O(parameters), independent of the batch")
    print(f"READ / hard-negative contrastive     = {median['read'] / median['hard_negatives']:.3f}x  (goal <= 1.15x)")
    print(f"  of which paraphrase alignment      = {median['read_no_recon'] / median['hard_negatives']:.3f}x; the frozen T5 decoder "
          f"(forward + input gradient) costs {(median['read'] - median['read_no_recon']) * 1000:.0f} ms/step")


if __name__ == "__main__":
    main()
