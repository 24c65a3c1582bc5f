"""Does the encoder make the MLLM better? Base CLIP vs the stage-2 ReasonCLIP encoder inside the same tiny
LLaVA recipe, per seed and per question kind (issue 24, point 3; docs/LEARNING_STUDY.md has every figure).

    OMP_NUM_THREADS=1 nice python bench/study_mllm_encoders.py --study /tmp/cat --out /tmp/mllm --seeds 0 1 2
    ... --tower-lr 0.2       # the change: the tower tuned at the published ratio (vision 2e-6 / LM 1e-5)

The encoders are those of bench/study_category_heads.py (--study: its output folder): per seed, the
start (stage 0 descriptive: "base CLIP") and stage 2 at --gamma, both exported as drop-in CLIP towers.
The images are that study's (its train split for the LLaVA stages, its held-out split for the questions),
so each encoder saw the training images and none saw the held-out ones. Per (seed, encoder), everything
else is identical: the tiny LM (same init seed), the projector's init seed, the data and its order, steps,
LRs. Stage A: projector pretraining on descriptive captions (tower and LM frozen); stage B: full LM +
projector (tower frozen, as in LLaVA-1.5; --tower-lr tunes it at that fraction of the LM LR), then merge
and greedy answers on held-out questions of each kind in `synthetic_vqa` plus presence (POPE-style).
Chance per kind = the most frequent answer of that kind among the held-out questions (the best image-blind
constant). Results: out/results_seed{N}.json, one line per (seed, encoder) printed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_category_heads import CUE_SPACE  # noqa: E402  the encoders' world

from reasonclip_llava.data.hard_negatives import stable_seed  # noqa: E402
from reasonclip_llava.data.synthetic import make_item  # noqa: E402
from reasonclip_llava.data.synthetic_vqa import QUESTION_KINDS, presence_question, question_answer  # noqa: E402
from reasonclip_llava.evaluation.benchmarks import SHORT_ANSWER_PROMPT, VQAQuestion  # noqa: E402

KINDS = (*QUESTION_KINDS, "presence")


def _question(scene, kind: str, rng: random.Random) -> tuple[str, str]:  # noqa: ANN001
    return presence_question(scene, rng) if kind == "presence" else question_answer(scene, kind, rng)


def write_vqa(study: Path, out: Path, image_size: int = 32) -> dict[str, Path]:
    """LLaVA JSON for stage A (image -> descriptive caption) and stage B (2 question turns per image) over
    the study's training images; held-out questions (every kind on every held-out image) as JSON."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"pretrain": out / "llava_pretrain.json", "instruct": out / "llava_instruct.json", "questions": out / "questions.json"}
    if paths["questions"].is_file():
        return paths
    train = pq.read_table(study / "data" / "train.parquet").to_pylist()
    held_out = pq.read_table(study / "data" / "eval.parquet").to_pylist()
    pretrain, instruct, questions = [], [], []
    for number, row in enumerate(train + held_out):
        index = int(Path(row["image_path"]).stem)
        scene = make_item(0, index, image_size, CUE_SPACE).scene  # the study data's seed and world
        rng = random.Random(stable_seed("mllm study", index))
        if number < len(train):
            pretrain.append({"id": f"pre-{index}", "image": row["image_path"], "conversations": [
                {"from": "human", "value": "<image>"}, {"from": "gpt", "value": row["tb"][0]}]})
            turns = []
            for turn, kind in enumerate(rng.sample(KINDS, 2)):
                question, answer = _question(scene, kind, rng)
                turns += [{"from": "human", "value": ("<image>\n" if turn == 0 else "") + f"{question}\n{SHORT_ANSWER_PROMPT}"},
                          {"from": "gpt", "value": answer}]
            instruct.append({"id": f"inst-{index}", "image": row["image_path"], "conversations": turns})
            continue
        for kind in KINDS:
            question, answer = _question(scene, kind, rng)
            questions.append({"id": f"{index}-{kind}", "kind": kind, "image": row["image_path"], "question": question, "answer": answer})
    paths["pretrain"].write_text(json.dumps(pretrain))
    paths["instruct"].write_text(json.dumps(instruct))
    paths["questions"].write_text(json.dumps(questions))
    return paths


def train_mllm(out: Path, encoder: Path, vqa: dict[str, Path], images: Path, seed: int, args: argparse.Namespace) -> Path:
    """Tiny LM + encoder -> stage A (projector) -> stage B (LM + projector [+ tower]) -> merged checkpoint."""
    from reasonclip_llava.mllm_train.merge import merge_and_export
    from reasonclip_llava.mllm_train.train import load_train_config, train_llava
    from reasonclip_llava.testing.tiny_lm import build_tiny_lm
    from reasonclip_llava.vlm.build import build_and_save

    if (out / "merged" / "config.json").is_file():
        return out / "merged"
    lm = build_tiny_lm(out / "tiny_lm", family="qwen2", seed=seed)
    built = build_and_save(lm, encoder, out / "built", arch=args.arch, seed=seed, overwrite=True)
    common = dict(image_folder=str(images), per_device_train_batch_size=args.batch, model_max_length=512, save_steps=100000,
                  report_to="none", seed=seed, overwrite=True, logging_steps=50)
    stage_a = train_llava(load_train_config(None, dict(
        common, model_name_or_path=str(built), data_path=str(vqa["pretrain"]), template="plain",
        mm_tunable_parts="mm_mlp_adapter", learning_rate=1e-2, max_steps=args.steps_a, output_dir=str(out / "stage_a"))))
    parts, tower = "mm_mlp_adapter,mm_language_model", {}
    if args.tower_lr:
        parts, tower = "mm_vision_tower," + parts, {"mm_vision_tower_lr": args.tower_lr * args.lr}
    stage_b = train_llava(load_train_config(None, dict(
        common, model_name_or_path=str(stage_a), data_path=str(vqa["instruct"]), template="auto", mm_tunable_parts=parts,
        learning_rate=args.lr, mm_projector_lr=1e-3, max_steps=args.steps_b, output_dir=str(out / "stage_b"), **tower)))
    return merge_and_export(stage_b, out / "merged", overwrite=True)


def normalise(text: str) -> str:
    return re.sub(r"[^a-z ]", "", text.lower()).strip()


def score(model_dir: Path, vqa: dict[str, Path], images: Path) -> dict[str, float]:
    """Exact-match accuracy per question kind (and overall) of greedy answers on the held-out questions."""
    from reasonclip_llava.evaluation.generate import answer_questions, load_llava_next

    rows = json.loads(vqa["questions"].read_text())
    questions = [VQAQuestion(r["id"], str(images / r["image"]), f"{r['question']}\n{SHORT_ANSWER_PROMPT}", max_new_tokens=4) for r in rows]
    model, processor = load_llava_next(model_dir)
    answers = {}
    for batch, texts in answer_questions(model, processor, questions, batch_size=32):
        answers.update({q.question_id: t for q, t in zip(batch, texts)})
    result = {}
    for kind in KINDS:
        of_kind = [r for r in rows if r["kind"] == kind]
        result[kind] = sum(normalise(answers[r["id"]]) == r["answer"] for r in of_kind) / len(of_kind)
    result["all"] = sum(normalise(answers[r["id"]]) == r["answer"] for r in rows) / len(rows)
    return result


def chance(vqa: dict[str, Path]) -> dict[str, float]:
    rows = json.loads(vqa["questions"].read_text())
    out = {}
    for kind in KINDS:
        counts = Counter(r["answer"] for r in rows if r["kind"] == kind)
        out[kind] = max(counts.values()) / sum(counts.values())
    return out


def main() -> None:
    from reasonclip_llava.encoder import export_encoder

    parser = argparse.ArgumentParser()
    parser.add_argument("--study", type=Path, required=True, help="bench/study_category_heads.py's --out")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--gamma", default="0.05", help="which stage-2 run of the study is the ReasonCLIP encoder")
    parser.add_argument("--arch", default="llava", help="llava (LLaVA-1.5, as the paper's table) or llava_next")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps-a", type=int, default=100)
    parser.add_argument("--steps-b", type=int, default=600)
    parser.add_argument("--lr", type=float, default=3e-3, help="stage-B LM LR")
    parser.add_argument("--tower-lr", type=float, default=0.0, help="0: tower frozen; else its LR as a fraction of --lr")
    args = parser.parse_args()
    torch.set_num_threads(1)
    vqa = write_vqa(args.study, args.out / "vqa")
    images = args.study / "data"
    print("chance (majority answer) " + "  ".join(f"{k} {v:.3f}" for k, v in chance(vqa).items()), flush=True)
    for seed in args.seeds:
        results = {"chance": chance(vqa)}
        checkpoints = {"base": (f"start_{seed}", "stage0"), "reasonclip": (f"stage2_gamma_{args.gamma}_{seed}", "stage2")}
        for name, (run, stage) in checkpoints.items():
            begin = time.perf_counter()
            encoder = export_encoder(args.study / run / "final", args.out / f"encoders/{name}_{seed}", stage=stage, overwrite=True)
            merged = train_mllm(args.out / f"{name}_{seed}", encoder, vqa, images, seed, args)
            results[name] = score(merged, vqa, images) | {"seconds": time.perf_counter() - begin}
            print(f"seed {seed} {name:10s} ({results[name]['seconds']:4.0f} s) "
                  + "  ".join(f"{k} {v:.3f}" for k, v in results[name].items() if k != "seconds"), flush=True)
            (args.out / f"results_seed{seed}.json").write_text(json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "seed": seed, "results": results}, indent=2))


if __name__ == "__main__":
    main()
