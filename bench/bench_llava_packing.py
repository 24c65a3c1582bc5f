"""Padded vs length-grouped vs packed LLaVA instruction batches on a LLaVA-665K-shaped length distribution,
and the cost of the dataset's length pre-pass at that scale.

The distribution. Composition from LLaVA-1.5's paper (Liu et al., "Improved Baselines with Visual Instruction
Tuning", arXiv:2310.03744, Table 7: the 665K mix and its response-format prompts): LLaVA-Instruct 158K
(conversation 58K, detail 23K, complex reasoning 77K), ShareGPT 40K (text-only), VQAv2 83K, GQA 72K, OKVQA 9K,
OCR-VQA 80K, A-OKVQA 66K, TextCaps 22K, RefCOCO 48K, VG 86K. Per source, the rounds per conversation and the
tokens per turn are MODELLED from the source's format (a short VQA answer after "Answer the question using a
single word or phrase.", several questions of one image merged into one conversation, ShareGPT's long
multi-turn chats, ...): see SOURCES. They are not measured on the released file, which this machine cannot
download. Every image row adds 576 image tokens (LLaVA-1.5: CLIP-L/14-336, one tile); rows are cut at 2,048.

Three parts, each printed as one table:

  1. computed tokens per optimizer step (LLaVA-1.5's recipe: 16 per device x 8 devices): padded = batch x the
     longest row of the micro-batch; length-grouped = the same with LLaVA's LengthGroupedSampler order
     (mllm_train.data, modality-grouped); packed = the sum of the rows (no padding). Linear layers cost what
     the tokens cost; attention costs sum(L^2) for packed with varlen kernels (flash-attention), or (sum L)^2
     with a dense block-diagonal mask (SDPA on a CPU), both printed.
  2. tokens/s of forward + backward of a tiny Qwen2 LM (the test-suite size, `--hidden`, `--layers`) on micro-
     batches drawn from the same distribution with lengths divided by `--scale`, each strategy on the same rows,
     interleaved repeats, real tokens / median step time, ratio to padded. `--attention auto` is what training
     picks: flash_attention_2 on a GPU in bf16 with flash-attn installed, else SDPA, whose block-diagonal mask
     for a packed row is dense, i.e. (sum L)^2 attention work: on a CPU at tiny width packing then loses.
  3. the length pre-pass: `--prepass-rows` synthetic rows of that shape (words of the tiny tokenizer's corpus,
     one shared image file) through LlavaConversationDataset (template qwen_1_5, LLaVA-1.5 one tile), seconds
     per 100k rows.

    python bench/bench_llava_packing.py                         # CPU, all three parts
    python bench/bench_llava_packing.py --device cuda --dtype bfloat16 --hidden 1024 --layers 8 --scale 1 --batch 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reasonclip_llava.mllm_train.data import LengthGroupedSampler

IMAGE_TOKENS = 576
MAX_LENGTH = 2048
SYSTEM_TOKENS = 35  # vicuna_v1's system prompt
ROUND_TOKENS = 8  # "USER: ... ASSISTANT: ...</s>" around each round


@dataclass(frozen=True)
class Source:
    """One source of the mix: rows, image or not, rounds per row, tokens per human / gpt turn (log-normal)."""

    name: str
    rows: int
    image: bool
    rounds: tuple[int, int]  # uniform integer range, inclusive
    human: tuple[float, float]  # median tokens, log-normal sigma
    gpt: tuple[float, float]


SOURCES = (
    Source("llava_conversation", 58_000, True, (2, 5), (14, 0.4), (60, 0.6)),
    Source("llava_detail", 23_000, True, (1, 1), (12, 0.2), (120, 0.4)),
    Source("llava_reasoning", 77_000, True, (1, 2), (22, 0.4), (150, 0.5)),
    Source("sharegpt", 40_000, False, (1, 8), (80, 1.0), (250, 0.8)),
    Source("vqav2", 83_000, True, (2, 7), (20, 0.2), (2, 0.4)),
    Source("gqa", 72_000, True, (3, 16), (22, 0.2), (2, 0.4)),
    Source("okvqa", 9_000, True, (1, 2), (20, 0.2), (2, 0.4)),
    Source("ocrvqa", 80_000, True, (2, 9), (15, 0.2), (4, 0.6)),
    Source("aokvqa", 66_000, True, (1, 1), (45, 0.3), (1, 0.0)),
    Source("textcaps", 22_000, True, (1, 1), (12, 0.1), (15, 0.3)),
    Source("refcoco", 48_000, True, (2, 9), (30, 0.2), (8, 0.4)),
    Source("vg", 86_000, True, (2, 9), (30, 0.2), (8, 0.4)),
)


@dataclass(frozen=True)
class Rows:
    """The sampled mix: per row its token length and image flag, and per round its human / gpt tokens."""

    lengths: np.ndarray
    images: np.ndarray
    starts: np.ndarray  # first round of each row in `human` / `gpt`
    rounds: np.ndarray
    human: np.ndarray
    gpt: np.ndarray

    def turns(self, row: int) -> list[tuple[int, int]]:
        start, count = self.starts[row], self.rounds[row]
        return list(zip(self.human[start : start + count].tolist(), self.gpt[start : start + count].tolist()))


def sample_rows(seed: int = 0) -> Rows:
    rng = np.random.default_rng(seed)
    parts = []
    for source in SOURCES:
        rounds = rng.integers(source.rounds[0], source.rounds[1] + 1, size=source.rows)
        total = int(rounds.sum())
        human = np.maximum(1, rng.lognormal(np.log(source.human[0]), source.human[1], total)).astype(np.int64)
        gpt = np.maximum(1, rng.lognormal(np.log(source.gpt[0]), source.gpt[1], total)).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(rounds)[:-1]])
        text = np.add.reduceat(human + gpt, starts)
        lengths = np.minimum(SYSTEM_TOKENS + text + ROUND_TOKENS * rounds + IMAGE_TOKENS * source.image, MAX_LENGTH)
        parts.append((lengths, np.full(source.rows, source.image), rounds, human, gpt))
    rounds = np.concatenate([part[2] for part in parts])
    return Rows(lengths=np.concatenate([part[0] for part in parts]), images=np.concatenate([part[1] for part in parts]),
                starts=np.concatenate([[0], np.cumsum(rounds)[:-1]]), rounds=rounds,
                human=np.concatenate([part[3] for part in parts]), gpt=np.concatenate([part[4] for part in parts]))


def batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order) - size + 1, size)]


def computed_tokens(lengths: np.ndarray, images: np.ndarray, batch: int, world: int, seed: int) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    orders = {
        "padded (random batches)": rng.permutation(len(lengths)).tolist(),
        "length-grouped (LLaVA)": list(LengthGroupedSampler(
            [int(n) if image else -int(n) for n, image in zip(lengths, images)], batch, world_size=world, seed=seed)),
    }
    results = {}
    for name, order in orders.items():
        groups = [lengths[b] for b in batches(order, batch)]
        results[name] = dict(real=sum(int(g.sum()) for g in groups), computed=sum(len(g) * int(g.max()) for g in groups),
                             attention=sum(len(g) * int(g.max()) ** 2 for g in groups))
    groups = [lengths[b] for b in batches(orders["padded (random batches)"], batch)]
    real = sum(int(g.sum()) for g in groups)
    results["packed"] = dict(real=real, computed=real, attention=sum(int((g.astype(np.int64) ** 2).sum()) for g in groups),
                             attention_dense=sum(int(g.sum()) ** 2 for g in groups))
    return results


# ---- 2. tiny-model throughput --------------------------------------------------------------------------------

def tiny_throughput(args, lengths: np.ndarray, images: np.ndarray) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, Qwen2Config
    from transformers.utils import is_flash_attn_2_available

    from reasonclip_llava.mllm_train.data import LlavaDataCollator

    config = Qwen2Config(vocab_size=1000, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 16),
                         num_key_value_heads=max(1, args.hidden // 32), max_position_embeddings=4096, use_cache=False)
    dtype = getattr(torch, args.dtype)
    attention = args.attention
    if attention == "auto":  # what packing_attention picks in training
        flash = args.device.startswith("cuda") and dtype != torch.float32 and is_flash_attn_2_available()
        attention = "flash_attention_2" if flash else "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention).to(args.device, dtype)
    rng = np.random.default_rng(1)
    scaled = np.maximum(4, lengths // args.scale)
    picked = rng.permutation(len(scaled))[: args.batch * args.steps]
    # LLaVA's sampler: modality-pure megabatches of world x batch rows, split into balanced device batches.
    signed = [int(n) if image else -int(n) for n, image in zip(scaled[picked], images[picked])]
    grouped_order = list(LengthGroupedSampler(signed, args.batch, world_size=args.world, seed=0))

    def items(indices):
        out = []
        for index in indices:
            ids = torch.randint(5, 1000, (int(scaled[picked][index]),))
            labels = ids.clone()
            labels[: len(ids) // 2] = -100
            out.append({"input_ids": ids, "labels": labels})
        return out

    steps = {
        "padded": [LlavaDataCollator(0)(items(range(s, s + args.batch))) for s in range(0, len(picked), args.batch)],
        "length-grouped": [LlavaDataCollator(0)(items(grouped_order[s : s + args.batch])) for s in range(0, len(picked), args.batch)],
        "packed": [LlavaDataCollator(0, packing=True)(items(range(s, s + args.batch))) for s in range(0, len(picked), args.batch)],
    }
    real = sum(int(n) for n in scaled[picked])

    def run(name: str) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in steps[name]:
            batch = {k: (v.to(args.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            model(**batch).loss.backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for name in steps:
        run(name)  # warm-up
    times = {name: [] for name in steps}
    for repeat in range(args.repeats):
        for name in (list(steps) if repeat % 2 == 0 else list(steps)[::-1]):
            times[name].append(run(name))
    print(f"\n2. tiny Qwen2 LM ({args.hidden} x {args.layers}, {attention}, {args.device} {args.dtype}, threads "
          f"{torch.get_num_threads()}): {args.steps} micro-batches of {args.batch}, lengths / {args.scale} "
          f"(mean {scaled[picked].mean():.0f}, max {scaled[picked].max()}), {args.repeats} interleaved repeats")
    print(f"{'':18}{'real tok':>10}{'computed':>10}{'median s':>10}{'tok/s':>10}{'ratio':>8}")
    base = statistics.median(times["padded"])
    rates = {}
    for name, batch_list in steps.items():
        computed = sum(int(b["input_ids"].numel()) for b in batch_list)
        median = statistics.median(times[name])
        rates[name] = real / median
        print(f"{name:18}{real:>10,}{computed:>10,}{median:>10.3f}{real / median:>10,.0f}{base / median:>8.2f}")
    return rates


# ---- 3. the length pre-pass ------------------------------------------------------------------------------------

def prepass_time(rows: int, folder: Path) -> None:
    from PIL import Image
    from transformers import LlavaProcessor

    from reasonclip_llava.mllm_train.data import LlavaConversationDataset
    from reasonclip_llava.testing.tiny_lm import CORPUS, build_tiny_tokenizer
    from reasonclip_llava.vlm.architectures import LlavaImageProcessor

    words = " ".join(CORPUS).split()
    rng = np.random.default_rng(2)
    mix = sample_rows(seed=3)
    images = mix.images
    chosen = rng.permutation(len(mix.lengths))[:rows]
    Image.new("RGB", (640, 480), (20, 120, 200)).save(folder / "coco.jpg")

    def text(tokens: int) -> str:  # ~0.75 words per token
        return " ".join(words[i] for i in rng.integers(0, len(words), max(1, int(tokens * 0.75))))

    data = []
    for k, index in enumerate(chosen):
        conversation = []
        for position, (human, gpt) in enumerate(mix.turns(index)):
            question = text(human)
            conversation += [{"from": "human", "value": ("<image>\n" + question) if images[index] and position == 0 else question},
                             {"from": "gpt", "value": text(gpt)}]
        row = {"id": str(k), "conversations": conversation}
        if images[index]:
            row["image"] = "coco.jpg"
        data.append(row)
    path = folder / "mix.json"
    path.write_text(json.dumps(data))
    size = path.stat().st_size
    del data
    tokenizer = build_tiny_tokenizer("qwen2")
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    processor = LlavaProcessor(
        image_processor=LlavaImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_pad=True),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    start = time.perf_counter()
    dataset = LlavaConversationDataset(path, folder, processor, "qwen_1_5", MAX_LENGTH, image_aspect_ratio="pad")
    seconds = time.perf_counter() - start
    print(f"\n3. length pre-pass: {rows:,} rows ({size / 1e6:.0f} MB JSON, template qwen_1_5, tiny Qwen2 BPE, one tile of "
          f"576 tokens), {len(dataset):,} kept: {seconds:.1f} s = {seconds / rows * 1e5:.1f} s per 100k rows "
          f"(JSON parse included; threads {torch.get_num_threads()})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16, help="rows per micro-batch (LLaVA-1.5: 16 per device)")
    parser.add_argument("--world", type=int, default=8, help="devices for the length-grouped megabatches (LLaVA-1.5: 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--attention", default="auto", help="sdpa | eager | flex_attention | flash_attention_2 | auto")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--scale", type=int, default=8, help="divide the row lengths by this for the tiny-model part")
    parser.add_argument("--steps", type=int, default=8, help="micro-batches per timed pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prepass-rows", type=int, default=100_000, help="0 skips part 3")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    mix = sample_rows(seed=0)
    lengths, images = mix.lengths, mix.images
    print(f"LLaVA-665K-shaped rows: {len(lengths):,} ({images.sum():,} with an image), tokens: mean {lengths.mean():.0f}, "
          f"median {np.median(lengths):.0f}, p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()} "
          f"({(lengths >= MAX_LENGTH).sum():,} cut at {MAX_LENGTH})")
    results = computed_tokens(lengths, images, args.batch, args.world, seed=0)
    print(f"\n1. computed tokens, micro-batch {args.batch}, length groups over {args.world} devices")
    print(f"{'':26}{'real / computed':>16}{'computed vs padded':>20}   attention vs padded")
    padded = results["padded (random batches)"]
    for name, row in results.items():
        attention = f"{row['attention'] / padded['attention']:.3f}"
        if "attention_dense" in row:
            attention += f" (dense mask {row['attention_dense'] / padded['attention']:.2f})"
        print(f"{name:26}{row['real'] / row['computed']:>16.3f}{row['computed'] / padded['computed']:>20.3f}   {attention}")
    saving = 1 - results["packed"]["computed"] / padded["computed"]
    print(f"packing computes {saving:.1%} fewer tokens than padded batches, "
          f"{1 - results['packed']['computed'] / results['length-grouped (LLaVA)']['computed']:.1%} fewer than length-grouped")
    if not args.skip_throughput:
        tiny_throughput(args, lengths, images)
    if args.prepass_rows:
        with tempfile.TemporaryDirectory() as directory:
            prepass_time(args.prepass_rows, Path(directory))


if __name__ == "__main__":
    main()
