"""Stage-1 and stage-2 learning studies on the synthetic world of reasonclip_llava.pretrain.study
(docs/LEARNING_STUDY.md has the settings tried and every figure).

    nice python bench/stage_learning_study.py --seeds 0 1 2 --out /tmp/study            # stage 1
    nice python bench/stage_learning_study.py --seeds 0 1 --out /tmp/study --stage2 400  # + stage 2

Per seed (= CLIP init seed = run seed): a learnable tiny CLIP -> stage 0 on descriptive captions (the
start) -> from that start, stage 0 on reasoning captions and stage 1 (dual stream, w(t), L2 anchor),
same steps, batch, LR and data. With --stage2 N: from the stage-1 checkpoint, N steps of stage 2
(ReasonPro rows: the same reasoning captions + category labels, category heads) vs N more steps of
stage 1, and stage 2 with gamma = 0 (its reasoning contrastive term alone: what the heads add). Every checkpoint is scored on held-out images with a plain CLIPModel (`study.measure`; stage 2
also `study.measure_heads`); one line per (seed, run) is printed and all of it goes to results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from reasonclip_llava.pretrain.demo import tiny_recipe
from reasonclip_llava.pretrain.study import add_study_arguments, measure, measure_heads, study_overrides, study_paths, write_study_data
from reasonclip_llava.pretrain.trainer import pretrain_from_yaml
from reasonclip_llava.testing.tiny import save_learnable_tiny_clip


def run_seed(out: Path, seed: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    done = study_paths(out / "data")  # the same data for every seed
    data = done if done["choice"].is_file() else write_study_data(out / "data", args.train, args.eval)
    clip = save_learnable_tiny_clip(out / f"clip{seed}", seed=seed, text_layers=args.text_layers, logit_scale=args.logit_scale)
    results = {}

    def run(name: str, recipe: str, model: Path, train: Path, steps: int, lr: str, *stage: str) -> Path:
        begin = time.perf_counter()
        final = out / f"{name} {seed}" / "final"  # a finished run is measured again, not retrained
        if not final.is_dir():
            overrides = study_overrides(model, train, out / f"{name} {seed}", steps, lr, seed, args.batch)
            final = pretrain_from_yaml(tiny_recipe(recipe), [*overrides, *stage])
        results[name] = measure(final, data)
        if "stage2" in stage[0]:
            results[name] |= measure_heads(final, data)
        print(f"seed {seed} {name:18s} ({time.perf_counter() - begin:4.0f} s) "
              + "  ".join(f"{k} {v:.3f}" for k, v in results[name].items()), flush=True)
        return final

    start = run("start", "tiny_stage1", clip, data["train"], args.start_steps, args.start_lr,
                "--stage.name=stage0", "--stage.captions=descriptive")
    results["start, blank image"] = measure(start, data, blank_image=True)
    print(f"seed {seed} start, blank image     " + "  ".join(f"{k} {v:.3f}" for k, v in results["start, blank image"].items()))
    stage1 = ["--stage.name=stage1", f"--stage.anchor_beta={args.beta}", f"--stage.w_schedule=[{args.w}]"]
    run("stage0 reasoning", "tiny_stage1", start, data["train"], args.steps, args.lr, "--stage.name=stage0", "--stage.captions=reasoning")
    after_stage1 = run("stage1", "tiny_stage1", start, data["train"], args.steps, args.lr, *stage1)
    if args.stage2:
        run("stage2", "tiny_stage2", after_stage1, data["pro"], args.stage2, args.lr,
            "--stage.name=stage2", f"--stage.category_gamma={args.gamma}")
        run("stage1 more", "tiny_stage1", after_stage1, data["train"], args.stage2, args.lr, *stage1)
        # the control that separates the heads from the loss: stage 2 without its category term
        run("stage2 gamma 0", "tiny_stage2", after_stage1, data["pro"], args.stage2, args.lr,
            "--stage.name=stage2", "--stage.category_gamma=0")
    return results


def main() -> None:
    parser = add_study_arguments(argparse.ArgumentParser())
    parser.add_argument("--start-lr", default="2e-3")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", default="1e-3")
    parser.add_argument("--beta", default="1e-5")
    parser.add_argument("--w", default="0.70,0.2,0.50,0.8,0.60")
    parser.add_argument("--stage2", type=int, default=0, help="steps of stage 2 vs more stage 1 (0: skip)")
    parser.add_argument("--gamma", default="0.05")
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--logit-scale", type=float, default=50.0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: fastest, and reproducible, on one thread
    all_results = {seed: run_seed(args.out, seed, args) for seed in args.seeds}
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": all_results}, indent=2))


if __name__ == "__main__":
    main()
