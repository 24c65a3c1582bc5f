"""Category heads, a fair test (issue 24, point 4; docs/LEARNING_STUDY.md has the settings and every figure).

    OMP_NUM_THREADS=1 nice python bench/study_category_heads.py --out /tmp/cat --seeds 0 1 2
    (or one process per seed, same --out: the data is written once, each seed writes results_seed{N}.json)

A world where every category an image is annotated with can be seen in it (`SceneSpace(category_cues=True)`:
S side by side, A an outlined object, H a triangle, T a trail, P two sizes; 3 of 5 per image, each 60%).
Per seed (= CLIP init seed = run seed): a learnable tiny CLIP -> stage 0 descriptive (the start) -> stage 1
-> from stage 1, stage 2 for --stage2 steps at each gamma of --gammas (0 = no heads, the published 0.05,
larger). Every checkpoint is scored on held-out images with a plain CLIPModel (`study.measure`: R@1s and the
RCLIP-Bench-style 5-way), stage 2 with heads also `study.measure_heads` (image head per category vs the
majority rule, text head), and stage 1 / every stage 2 with `study.probe_categories` (a linear probe fitted
to convergence on the frozen image embeddings: whether the features hold the cues at all).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from reasonclip_llava.data.synthetic import SceneSpace
from reasonclip_llava.pretrain.demo import tiny_recipe
from reasonclip_llava.pretrain.study import add_study_arguments, measure, measure_heads, probe_categories, study_overrides, study_paths, write_study_data
from reasonclip_llava.pretrain.trainer import pretrain_from_yaml
from reasonclip_llava.testing.tiny import save_learnable_tiny_clip

CUE_SPACE = SceneSpace(category_cues=True)


def study_data(out: Path, num_train: int, num_eval: int) -> dict[str, Path]:
    """The cue world's data under out/data, the same for every seed (written once)."""
    done = study_paths(out / "data")
    return done if done["choice"].is_file() else write_study_data(out / "data", num_train, num_eval, space=CUE_SPACE)


def run_seed(out: Path, seed: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    data = study_data(out, args.train, args.eval)
    clip = save_learnable_tiny_clip(out / f"clip{seed}", seed=seed, text_layers=2, logit_scale=50.0)
    results: dict[str, dict[str, float]] = {}
    result_file = out / f"results_seed{seed}.json"

    def run(name: str, recipe: str, model: Path, train: Path, steps: int, lr: str, *stage: str, probe: bool = False) -> Path:
        begin = time.perf_counter()
        final = out / f"{name} {seed}".replace(" ", "_") / "final"  # a finished run is measured again, not retrained
        if not final.is_dir():
            overrides = study_overrides(model, train, final.parent, steps, lr, seed, args.batch)
            final = pretrain_from_yaml(tiny_recipe(recipe), [*overrides, *stage])
        trained = time.perf_counter() - begin
        results[name] = measure(final, data)
        if (final / "heads.safetensors").is_file():
            results[name] |= measure_heads(final, data)
        if probe:
            results[name] |= probe_categories(final, data)
        results[name]["seconds"] = trained
        print(f"seed {seed} {name:16s} ({trained:4.0f} s) " + "  ".join(f"{k} {v:.3f}" for k, v in results[name].items()), flush=True)
        result_file.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "seed": seed, "results": results}, indent=2))
        return final

    start = run("start", "tiny_stage1", clip, data["train"], args.start_steps, "2e-3", "--stage.name=stage0", "--stage.captions=descriptive")
    stage1 = run("stage1", "tiny_stage1", start, data["train"], args.steps, "1e-3", "--stage.name=stage1", "--stage.anchor_beta=1e-5",
                 "--stage.w_schedule=[0.70,0.2,0.50,0.8,0.60]", probe=True)
    for gamma in args.gammas:
        run(f"stage2 gamma {gamma}", "tiny_stage2", stage1, data["pro"], args.stage2, "1e-3", "--stage.name=stage2",
            f"--stage.category_gamma={gamma}", probe=True)
    return results


def main() -> None:
    parser = add_study_arguments(argparse.ArgumentParser())
    parser.add_argument("--steps", type=int, default=800, help="stage-1 steps")
    parser.add_argument("--stage2", type=int, default=1500, help="stage-2 steps per gamma")
    parser.add_argument("--gammas", nargs="+", default=["0", "0.05", "0.5"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: fastest, and reproducible, on one thread
    for seed in args.seeds:
        run_seed(args.out, seed, args)


if __name__ == "__main__":
    main()
