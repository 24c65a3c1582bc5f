"""Cost of the stage objectives relative to their plain baselines, one full training step each.

    python bench/bench_pretrain_steps.py                       # ViT-B/32-shaped CLIP, 2 layers per tower
    python bench/bench_pretrain_steps.py --layers 12 --batch 64 --device cuda

Steps compared (forward + backward + AdamW step + zero_grad, through `StageObjective`, i.e. exactly
what the trainer runs), on one random-init CLIP built from a config shaped like ViT-B/32 (vision 768
wide, patch 32, 224 px; text 512 wide, vocabulary 49408; 512-d joint space) with `--layers` layers per
tower (12 is the real depth; fewer keep a CPU run short):

    stage-1 step (two caption streams + L2 anchor)       vs  plain contrastive step      goal <= 1.15x
    READ step (hard negatives + T5 recon + alignment)    vs  hard-negative contrastive   goal <= 1.30x

READ's frozen decoder is shaped like t5-v1_1-large (width 1024, ff 2816, 16 heads, 32128 tokens) with
`--t5-layers` layers (24 is the real depth; the default keeps the depth ratio to the CLIP towers).
Captions are `--caption-tokens` long (the collator pads to the longest caption of the batch; ReasonLite
captions are <= 30 words). Timings are medians of interleaved repeats; nothing is asserted.
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
from reasonclip_llava.pretrain.trainer import build_optimizer


def b32_config(layers: int) -> CLIPConfig:
    vision = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=layers, image_size=224, patch_size=32)
    text = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=layers, vocab_size=49408,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=512)


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


def make_batch(batch: int, tokens: int, k: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {"pixel_values": torch.randn(batch, 3, 224, 224, generator=g)}
    for name, rows in (("desc", batch), ("reason", batch), ("caption", batch), ("paraphrase", batch), ("neg", batch * k)):
        out[f"{name}_input_ids"], out[f"{name}_attention_mask"] = caption_ids(rows, tokens, g)
    recon = torch.randint(3, 32128, (batch, tokens), generator=g)
    out["recon_labels"], out["recon_attention_mask"] = recon, torch.ones_like(recon)
    return {key: value.to(device) for key, value in out.items()}


class Step:
    """One configured training step: objective + AdamW over the configured parameter groups."""

    def __init__(self, base: CLIPModel, stage: StageConfig, device: str, t5: T5ForConditionalGeneration | None = None):
        heads = HeadsConfig(recon_dim=t5.config.d_model if t5 is not None else None)
        model = CLIPModel(base.config)
        model.load_state_dict(base.state_dict())
        self.encoder = ReasonCLIPForPretraining(model, heads)
        self.objective = StageObjective(self.encoder, stage, max_steps=100, logit_scale_max=math.log(50), t5=t5).to(device)
        self.optimizer = build_optimizer(self.encoder, OptimConfig(lr=1e-5))  # the trainer's optimizer
        self.device = device

    def __call__(self, batch: dict[str, torch.Tensor]) -> float:
        sync = torch.cuda.synchronize if self.device.startswith("cuda") else (lambda: None)
        sync()
        start = time.perf_counter()
        loss, _ = self.objective(batch, step=50)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="layers per CLIP tower (ViT-B/32 has 12)")
    parser.add_argument("--t5-layers", type=int, default=None, help="T5 decoder layers (t5-v1_1-large has 24; default 2 x --layers)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--caption-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = CLIPModel(b32_config(args.layers))
    t5 = t5_large_decoder(args.t5_layers or 2 * args.layers)
    steps = {
        "plain": Step(base, StageConfig(name="stage0"), args.device),
        "stage1": Step(base, StageConfig(name="stage1"), args.device),
        "stage1_no_anchor": Step(base, StageConfig(name="stage1", anchor_beta=0.0), args.device),  # where the cost goes
        "hard_negatives": Step(base, StageConfig(name="stage0", hard_negatives=3), args.device),
        "read": Step(base, StageConfig(name="read", hard_negatives=3), args.device, t5=t5),
        "read_no_recon": Step(base, StageConfig(name="read", hard_negatives=3, recon_weight=0.0), args.device),  # where the cost goes
    }
    batch = make_batch(args.batch, args.caption_tokens, 3, args.device)
    for step in steps.values():  # warm-up (allocator, AdamW state)
        step(batch)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():  # interleaved, so load changes hit every variant alike
            times[name].append(step(batch))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"device={args.device} threads={torch.get_num_threads()} layers={args.layers} t5_layers={args.t5_layers or 2 * args.layers} "
          f"batch={args.batch} caption_tokens={args.caption_tokens} repeats={args.repeats}")
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
