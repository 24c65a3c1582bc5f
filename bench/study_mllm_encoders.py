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
The arms, their resume, the recipe check and the table are `reasonclip_llava.compare.compare_encoders`'s
(one call per seed, since each seed has its own pair of encoders; chance = its rule, a uniform guess among
the kind's distinct answers). Results: out/seed{N}/comparison.* and out/results_seed{N}.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_category_heads import CUE_SPACE  # noqa: E402  the encoders' world

from reasonclip_llava.data.hard_negatives import stable_seed  # noqa: E402
from reasonclip_llava.data.synthetic import make_item  # noqa: E402
from reasonclip_llava.data.synthetic_vqa import QUESTION_KINDS, presence_question, question_answer  # noqa: E402
from reasonclip_llava.evaluation.benchmarks import SHORT_ANSWER_PROMPT  # noqa: E402

KINDS = (*QUESTION_KINDS, "presence")


def _question(scene, kind: str, rng: random.Random) -> tuple[str, str]:  # noqa: ANN001
    return presence_question(scene, rng) if kind == "presence" else question_answer(scene, kind, rng)


def write_vqa(study: Path, out: Path, image_size: int = 32) -> dict[str, Path]:
    """LLaVA JSON for stage A (image -> descriptive caption) and stage B (2 question turns per image) over
    the study's training images; held-out benchmarks in the released layouts compare reads (`data_root`):
    GQA (every kind of `QUESTION_KINDS` on every held-out image, the kind as `types.semantic`) and POPE
    (one presence question per held-out image), as `synthetic_vqa.generate_synthetic_vqa` writes them."""
    root = out / "vqa_eval"
    paths = {"pretrain": out / "llava_pretrain.json", "instruct": out / "llava_instruct.json", "data_root": root,
             "gqa": root / "gqa" / "testdev_balanced_questions.json", "pope": root / "pope" / "coco_pope_random.json"}
    if paths["pope"].is_file():
        return paths
    for folder in (root / "gqa" / "images", root / "pope" / "val2014"):
        folder.mkdir(parents=True, exist_ok=True)
    train = pq.read_table(study / "data" / "train.parquet").to_pylist()
    held_out = pq.read_table(study / "data" / "eval.parquet").to_pylist()
    pretrain, instruct, gqa, pope = [], [], {}, []
    for number, row in enumerate(train + held_out):
        index = int(Path(row["image_path"]).stem)
        item = make_item(0, index, image_size, CUE_SPACE)  # the study data's seed and world
        rng = random.Random(stable_seed("mllm study", index))
        if number < len(train):
            pretrain.append({"id": f"pre-{index}", "image": row["image_path"], "conversations": [
                {"from": "human", "value": "<image>"}, {"from": "gpt", "value": row["tb"][0]}]})
            turns = []
            for turn, kind in enumerate(rng.sample(KINDS, 2)):
                question, answer = _question(item.scene, kind, rng)
                turns += [{"from": "human", "value": ("<image>\n" if turn == 0 else "") + f"{question}\n{SHORT_ANSWER_PROMPT}"},
                          {"from": "gpt", "value": answer}]
            instruct.append({"id": f"inst-{index}", "image": row["image_path"], "conversations": turns})
            continue
        image_id = f"syn{index:06d}"
        # JPEG as the released files, 4:4:4 so that 1-px outlines keep their colour at 32 px
        item.image.convert("RGB").save(root / "gqa" / "images" / f"{image_id}.jpg", quality=95, subsampling=0)
        for kind in QUESTION_KINDS:
            question, answer = question_answer(item.scene, kind, rng)
            gqa[f"{image_id}-{kind}"] = {"imageId": image_id, "question": question, "answer": answer, "fullAnswer": answer,
                                         "types": {"structural": "verify" if answer in ("yes", "no") else "query", "semantic": kind}}
        pope_name = f"COCO_val2014_{index:012d}.jpg"
        item.image.convert("RGB").save(root / "pope" / "val2014" / pope_name, quality=95, subsampling=0)
        question, label = presence_question(item.scene, rng)
        pope.append({"question_id": index, "image": pope_name, "text": question, "label": label})
    paths["pretrain"].write_text(json.dumps(pretrain))
    paths["instruct"].write_text(json.dumps(instruct))
    paths["gqa"].write_text(json.dumps(gqa))
    paths["pope"].write_text("".join(json.dumps(row) + "\n" for row in pope))
    return paths


def recipe(vqa: dict[str, Path], images: Path, args: argparse.Namespace) -> list[dict]:
    """The two LLaVA stages (llava-train keys), the same for every arm: projector pretraining on the
    descriptive captions (tower and LM frozen), then the LM + projector on the questions (tower frozen, as
    in LLaVA-1.5; --tower-lr tunes it at that fraction of the LM LR)."""
    common = dict(image_folder=str(images), per_device_train_batch_size=args.batch, model_max_length=512, save_steps=100000,
                  report_to="none", logging_steps=50, arch=args.arch)
    stage_a = dict(common, data_path=str(vqa["pretrain"]), template="plain", mm_tunable_parts="mm_mlp_adapter", learning_rate=1e-2,
                   max_steps=args.steps_a)
    parts, tower = "mm_mlp_adapter,mm_language_model", {}
    if args.tower_lr:
        parts, tower = "mm_vision_tower," + parts, {"mm_vision_tower_lr": args.tower_lr * args.lr}
    stage_b = dict(common, data_path=str(vqa["instruct"]), template="auto", mm_tunable_parts=parts, learning_rate=args.lr,
                   mm_projector_lr=1e-3, max_steps=args.steps_b, **tower)
    return [stage_a, stage_b]


def main() -> None:
    from reasonclip_llava.compare import compare_encoders, comparison_markdown, reading
    from reasonclip_llava.encoder import export_encoder
    from reasonclip_llava.testing.tiny_lm import build_tiny_lm

    parser = argparse.ArgumentParser()
    parser.add_argument("--study", type=Path, required=True, help="bench/study_category_heads.py's --out")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--encoders", nargs="+", default=["base=start", "reasonclip=stage2_gamma_0.05"],
                        help="name=run of the study (per seed: {run}_{seed}/final)")
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
    stages = recipe(vqa, images, args)
    for seed in args.seeds:
        begin = time.perf_counter()
        encoders = {}
        for entry in args.encoders:
            name, run = entry.split("=")
            stage = "stage0" if run == "start" else "stage2"
            encoders[name] = export_encoder(args.study / f"{run}_{seed}" / "final", args.out / "encoders" / f"{name}_{seed}",
                                            stage=stage, overwrite=True)
        # one LM init per seed; the projector's init and the data order follow the seed too (compare's arms)
        lm = build_tiny_lm(args.out / f"tiny_lm_{seed}", family="qwen2", seed=seed)
        record = compare_encoders(list(encoders.values()), lm, stages, vqa["data_root"], args.out / f"seed{seed}",
                                  names=list(encoders), benchmarks=["gqa", "pope"], seeds=[seed], arch=args.arch,
                                  max_new_tokens=4, batch_size=32, title=f"tiny LLaVA, same recipe, seed {seed}")
        print(f"seed {seed} ({time.perf_counter() - begin:.0f} s)\n" + comparison_markdown(record) + reading(record), flush=True)
        (args.out / f"results_seed{seed}.json").write_text(json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "seed": seed, "record": record}, indent=2))


if __name__ == "__main__":
    main()
