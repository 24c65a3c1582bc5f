"""`reasonclip compare`: the paper's experiment, one MLLM per encoder with everything else identical.

    compare_encoders(["clip", "reasonclip"], lm, ["stage_a.yaml", "stage_b.yaml"], data_root, "cmp",
                     benchmarks=["gqa", "pope"], seeds=3)

For every encoder (and seed) one *arm*: `vlm.build` (the LM + this encoder's tower + a projector whose
init depends on the seed only), the recipe's LLaVA stages in order (`mllm_train.train`, each stage
starting from the previous one's output; the first from the build), `mllm_train.merge`, then the eval
suite on the benchmarks (`evaluation.suite.run_vqa_suite`: generate + official scoring). Arms of one seed
share the data order, the steps, the LRs, LoRA or full: the recipe is the same file for all, and after
training the configs each stage recorded are read back and compared (only the encoder, the seed and the
arm's own paths may differ).

Written under `out_dir`:
- ``arms/{name}/seed{s}/``: ``built/``, ``stage{i}/``, ``merged/``, ``eval/`` and ``arm.json`` (the plan:
  encoder, LM, build options, every stage's resolved config, benchmarks; plus the steps done). An arm
  whose arm.json records the same plan and every step done is not retrained: a rerun resumes.
- ``recipes/{name}_seed{s}.yaml``: the configs each stage actually ran with (read from its output).
- ``comparison.md`` / ``comparison.json`` / ``comparison.png``: per benchmark and question kind, each
  encoder's score, chance, and the difference to the first encoder with its spread: mean and range over
  seeds, or with one seed a 95% paired bootstrap interval over items.

Multi-GPU: start the whole command under the launcher, ``torchrun --nproc_per_node N -m
reasonclip_llava.cli compare ...`` (with ``deepspeed: train/zero3.json`` in the recipe as usual): the
stages run data-parallel through the Trainer exactly as `llava-train` does, answering is sharded as in
`eval vqa`, and build / merge / the tables are written by rank 0 between barriers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

import yaml

FORMAT = "reasonclip.compare/1"
# the per-question field that says an item's kind, per benchmark (GQA: its semantic type; POPE: the split)
KIND_FIELDS = {"gqa": "semantic", "pope": "split", "mme": "subtask", "mmbench": "category"}
# config keys an arm sets itself; every other key must be equal across arms
ARM_KEYS = ("model_name_or_path", "output_dir", "seed", "language_model", "vision_tower", "resume_from_checkpoint", "overwrite")
CHANCE_RULE = ("chance = a uniform guess among the kind's distinct gold answers (the 'all' row: each item at its kind's "
               "chance)")
BOOTSTRAP_RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    encoder: Path
    seed: int
    root: Path

    @property
    def label(self) -> str:
        return f"{self.name}_seed{self.seed}"


def compare_encoders(
    encoders: Sequence[str | Path],
    lm: str | Path,
    recipes: Sequence[str | Path | dict],
    data_root: str | Path,
    out_dir: str | Path,
    *,
    benchmarks: Sequence[str] | None = None,
    layout: str | Path | None = None,
    names: Sequence[str] | None = None,
    seeds: int | Sequence[int] = 1,
    arch: str | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    title: str = "MLLM comparison: same recipe, different encoder",
) -> dict[str, Any]:
    """Train, merge and evaluate one MLLM per encoder and seed; write the comparison table and figure.

    recipes: the LLaVA stages in order (YAML files in `llava-train`'s format, or dicts of its keys); an
    arm overrides only model_name_or_path, output_dir and seed. benchmarks / layout: as `eval suite`
    (names under `data_root`; None = every benchmark found). seeds: a count (0..N-1) or the seeds.
    overwrite: retrain an arm whose recorded plan differs (else refused). Returns the comparison record.
    """
    from .evaluation.suite import VQA_LAYOUT, _present, resolve_layout
    from .io_utils import is_main_launch_rank

    if len(encoders) < 2:
        raise ValueError(f"--encoders: give at least two encoders to compare, got {len(encoders)}")
    names = list(names) if names else [Path(e).name for e in encoders]
    if len(names) != len(encoders) or len(set(names)) != len(names):
        raise ValueError(f"--names: one distinct name per encoder, got {names} for {len(encoders)} encoders")
    for encoder in encoders:
        if not (Path(encoder) / "config.json").is_file():
            raise FileNotFoundError(f"--encoders: no config.json in {encoder}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"--seeds: a positive count or distinct seeds, got {seeds}")
    if not recipes:
        raise ValueError("--recipe: give at least one LLaVA stage recipe")
    root = Path(data_root)
    table = resolve_layout(VQA_LAYOUT, layout, list(benchmarks) if benchmarks else None)
    present = [name for name, entry in table.items() if _present(root, entry, name)]
    if benchmarks and len(present) < len(table):
        missing = [name for name in table if name not in present]
        raise FileNotFoundError(f"--benchmarks: data not under {root} for {', '.join(missing)}")
    if not present:
        raise FileNotFoundError(f"--data-root: no benchmark data under {root}")
    out = Path(out_dir)
    arms = [Arm(name, Path(encoder).resolve(), seed, out / "arms" / name / f"seed{seed}")
            for seed in seed_list for name, encoder in zip(names, encoders)]
    stages = [_recipe_values(recipe) for recipe in recipes]
    arch = arch or stages[0].get("arch")
    main = is_main_launch_rank()
    for arm in arms:
        plan = arm_plan(arm, lm, stages, arch, root, present, layout, limit, max_new_tokens)
        _run_arm(arm, plan, root, present, layout, limit, max_new_tokens, batch_size, overwrite, main)
    if not main:
        return {}
    recipes_used = _write_recipes(arms, out)
    check_only_encoder_differs(recipes_used)
    record = summarise(arms, present, names, seed_list)
    write_comparison(record, out, title)
    return record


# ---- plan / resume ---------------------------------------------------------------------------------

def _recipe_values(recipe: str | Path | dict) -> dict[str, Any]:
    from .config_utils import read_yaml_mapping

    return dict(recipe) if isinstance(recipe, dict) else read_yaml_mapping(recipe, "LLaVA recipe")


def _stage_config(arm: Arm, values: dict[str, Any], index: int, start: Path):
    from .mllm_train.train import config_from_dict

    values = {key: value for key, value in values.items() if key not in ("language_model", "vision_tower", "arch")}
    return config_from_dict({**values, "model_name_or_path": str(start), "output_dir": str(arm.root / f"stage{index}"),
                             "seed": arm.seed, "resume_from_checkpoint": None, "overwrite": True})


def arm_plan(arm: Arm, lm, stages: list[dict], arch: str | None, root: Path, benchmarks: list[str], layout, limit, max_new_tokens) -> dict:
    """Everything that decides what an arm computes (its arm.json, compared on resume)."""
    first = stages[0]
    build = {"language_model": str(Path(lm).resolve()), "encoder": str(arm.encoder), "arch": arch, "seed": arm.seed,
             "image_aspect_ratio": first.get("image_aspect_ratio"), "mm_patch_merge_type": first.get("mm_patch_merge_type"),
             "image_grid_pinpoints": first.get("image_grid_pinpoints"),
             "vision_feature_layer": int(first.get("mm_vision_select_layer", -2))}
    configs, start = [], arm.root / "built"
    for index, values in enumerate(stages):
        config = _stage_config(arm, values, index, start)
        configs.append(dataclasses.asdict(config))
        start = Path(config.output_dir)
    return {"format": FORMAT, "name": arm.name, "seed": arm.seed, "build": build, "stages": configs,
            "eval": {"data_root": str(root.resolve()), "benchmarks": benchmarks, "layout": str(layout) if layout else None,
                     "limit": limit, "max_new_tokens": max_new_tokens}}


def _read_arm(arm: Arm) -> dict | None:
    path = arm.root / "arm.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _write_arm(arm: Arm, plan: dict, done: list[str]) -> None:
    arm.root.mkdir(parents=True, exist_ok=True)
    tmp = arm.root / "arm.json.tmp"
    tmp.write_text(json.dumps({**plan, "done": done}, indent=2))
    tmp.replace(arm.root / "arm.json")


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in dict.fromkeys([*a, *b]):
            found = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _first_difference(x, y, f"{where}[{i}]"))), None)
    return None if a == b else where or "(root)"


def _arm_finished(arm: Arm, benchmarks: list[str]) -> bool:
    return (arm.root / "merged" / "config.json").is_file() and all(
        (arm.root / "eval" / f"{b}_scores.jsonl").is_file() and (arm.root / "eval" / f"{b}_answers.jsonl").is_file()
        for b in benchmarks)


def _run_arm(arm: Arm, plan: dict, root: Path, benchmarks: list[str], layout, limit, max_new_tokens, batch_size: int,
             overwrite: bool, main: bool) -> None:
    from .evaluation.generate import Launch

    recorded = _read_arm(arm)
    if recorded is not None:
        difference = _first_difference({k: v for k, v in recorded.items() if k != "done"}, plan)
        if difference and not overwrite:
            raise ValueError(f"{arm.root}: this arm was run with another plan ({difference} differs); "
                             "pass --overwrite to retrain it or choose another --out")
        done = [] if difference else list(recorded.get("done", []))
    elif arm.root.exists() and any(arm.root.iterdir()) and not overwrite:
        raise ValueError(f"{arm.root} is not empty and holds no arm.json: not a compare arm; choose another --out")
    else:
        done = []
    if "eval" in done and _arm_finished(arm, benchmarks):
        print(f"[compare] {arm.label}: finished before, not retrained", flush=True)
        return
    launch = Launch.from_env("cuda" if _cuda() else "cpu")
    if main and not done:
        shutil.rmtree(arm.root, ignore_errors=True)  # a changed plan (or nothing): the arm starts clean
        _write_arm(arm, plan, done)
    launch.barrier()
    steps = _arm_steps(arm, plan, root, benchmarks, layout, limit, max_new_tokens, batch_size)
    for step, run in steps:
        if step in done:
            continue
        print(f"[compare] {arm.label}: {step}", flush=True)
        run(main)
        launch.barrier()
        done.append(step)
        if main:
            _write_arm(arm, plan, done)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _arm_steps(arm: Arm, plan: dict, root: Path, benchmarks, layout, limit, max_new_tokens, batch_size):
    from .mllm_train.merge import merge_and_export
    from .mllm_train.train import config_from_dict, train_llava
    from .vlm.build import build_and_save

    build = dict(plan["build"])

    def run_build(main: bool) -> None:
        if main:  # one writer; the other ranks wait at the barrier
            options = {k: v for k, v in build.items() if k not in ("language_model", "encoder") and v is not None}
            build_and_save(build["language_model"], build["encoder"], arm.root / "built", overwrite=True, **options)

    def run_stage(values: dict):
        return lambda main: train_llava(config_from_dict(values))  # every rank trains (Trainer / DeepSpeed)

    def run_merge(main: bool) -> None:
        if main:
            merge_and_export(plan["stages"][-1]["output_dir"], arm.root / "merged", overwrite=True)

    def run_eval(main: bool) -> None:
        from .evaluation.suite import run_vqa_suite

        if main:  # answers of an earlier model of this arm are not this model's
            shutil.rmtree(arm.root / "eval", ignore_errors=True)
        run_vqa_suite(arm.root / "merged", root, arm.root / "eval", benchmarks=list(benchmarks), layout=layout, limit=limit,
                      batch_size=batch_size, progress=False, max_new_tokens=max_new_tokens, device="cuda" if _cuda() else "cpu")

    return [("build", run_build), *((f"stage{i}", run_stage(values)) for i, values in enumerate(plan["stages"])),
            ("merge", run_merge), ("eval", run_eval)]


# ---- what actually ran ---------------------------------------------------------------------------------

def _write_recipes(arms: list[Arm], out: Path) -> dict[str, list[dict]]:
    """Each stage's recorded config (its output's run config), one YAML per arm under recipes/."""
    from .mllm_train.train import TRAIN_CONFIG_NAME

    used: dict[str, list[dict]] = {}
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    for arm in arms:
        plan = _read_arm(arm) or {}
        stages = []
        for stage in plan.get("stages", []):
            path = Path(stage["output_dir"]) / TRAIN_CONFIG_NAME
            if not path.is_file():
                raise FileNotFoundError(f"{arm.label}: the stage's recorded config is missing: {path}")
            stages.append(yaml.safe_load(path.read_text()))
        used[arm.label] = [{"build": plan.get("build")}, *stages]
        (out / "recipes" / f"{arm.label}.yaml").write_text(yaml.safe_dump(used[arm.label], sort_keys=False))
    return used


def check_only_encoder_differs(used: dict[str, list[dict]]) -> None:
    """Raise ValueError naming the first key (other than the encoder, seed and the arm's paths) that differs."""
    def neutral(stages: list[dict]) -> list[dict]:
        build = {k: v for k, v in (stages[0].get("build") or {}).items() if k not in ("encoder", "seed")}
        return [build, *({k: v for k, v in stage.items() if k not in ARM_KEYS} for stage in stages[1:])]

    labels = list(used)
    reference = neutral(used[labels[0]])
    for label in labels[1:]:
        difference = _first_difference(reference, neutral(used[label]))
        if difference:
            raise ValueError(f"arms {labels[0]} and {label} differ in more than the encoder: {difference}")


# ---- the table -------------------------------------------------------------------------------------------

def _item_scores(arm: Arm, benchmark: str) -> list[dict]:
    rows = []
    with open(arm.root / "eval" / f"{benchmark}_scores.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _kind(row: dict, benchmark: str) -> str | None:
    field = KIND_FIELDS.get(benchmark)
    value = row.get(field) if field else None
    return str(value) if value not in (None, "") else None


def _gold(row: dict) -> Any:
    return row.get("answer", row.get("label"))


def chance_level(rows: Sequence[dict]) -> float | None:
    """Percent a uniform guess among the distinct gold answers scores (None where no gold answer is recorded)."""
    golds = {json.dumps(_gold(row), sort_keys=True) for row in rows if _gold(row) is not None}
    return 100.0 / len(golds) if golds else None


def bootstrap_interval(first: Sequence[float], other: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(other - first) over items resampled with replacement (paired), in points."""
    import numpy as np

    differences = 100.0 * (np.asarray(other, dtype=float) - np.asarray(first, dtype=float))
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), size=(resamples, len(differences)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def summarise(arms: list[Arm], benchmarks: list[str], names: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per benchmark and kind: scores per encoder and seed, chance, difference to names[0] with its spread."""
    by_arm = {(arm.name, arm.seed): arm for arm in arms}
    spread = "range over seeds" if len(seeds) > 1 else "95% paired bootstrap interval over items"
    rows = []
    for benchmark in benchmarks:
        items = {key: {row["question_id"]: row for row in _item_scores(arm, benchmark)} for key, arm in by_arm.items()}
        reference = items[(names[0], seeds[0])]
        kinds = list(dict.fromkeys(k for row in reference.values() if (k := _kind(row, benchmark)) is not None))
        for kind in ["all", *kinds] if len(kinds) > 1 else ["all"]:
            ids = [qid for qid, row in reference.items() if kind == "all" or _kind(row, benchmark) == kind]
            scores = {name: [100.0 * _mean([items[(name, s)][q]["score"] for q in ids]) for s in seeds] for name in names}
            entry = {"benchmark": benchmark, "kind": kind, "n": len(ids), "chance": _chance(reference, ids, kinds, kind, benchmark),
                     "scores": {name: {"mean": _mean(v), "per_seed": v} for name, v in scores.items()}, "diff": {}}
            for name in names[1:]:
                per_seed = [b - a for a, b in zip(scores[names[0]], scores[name])]
                if len(seeds) > 1:
                    low, high = min(per_seed), max(per_seed)
                else:
                    low, high = bootstrap_interval([items[(names[0], seeds[0])][q]["score"] for q in ids],
                                                   [items[(name, seeds[0])][q]["score"] for q in ids])
                entry["diff"][name] = {"mean": _mean(per_seed), "per_seed": per_seed, "low": low, "high": high,
                                       "beyond_spread": low > 0 or high < 0}
            rows.append(entry)
    return {"format": FORMAT, "encoders": names, "seeds": seeds, "spread": spread, "chance_rule": CHANCE_RULE,
            "arms": {arm.label: str(arm.root) for arm in arms}, "rows": rows}


def _chance(reference: dict[str, dict], ids: list[str], kinds: list[str], kind: str, benchmark: str) -> float | None:
    # "all" over several kinds: each item at its own kind's chance (a guess among all answers would be too low)
    if kind != "all" or len(kinds) < 2:
        return chance_level([reference[q] for q in ids])
    per_kind = {k: chance_level([row for row in reference.values() if _kind(row, benchmark) == k]) for k in kinds}
    if None in per_kind.values():
        return None
    return _mean([per_kind[_kind(reference[q], benchmark)] for q in ids])


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def comparison_markdown(record: dict[str, Any]) -> str:
    """The table: one row per benchmark and kind; chance and the spread's kind named in the header."""
    from .evaluation.report import VQA_LABELS

    names, spread = record["encoders"], record["spread"]
    seeds = f"{len(record['seeds'])} seeds, mean" if len(record["seeds"]) > 1 else "1 seed"
    header = ["benchmark", "kind", "n", "chance %", *(f"{n} %" for n in names),
              *(f"{n} − {names[0]} (points; [{spread}])" for n in names[1:])]
    lines = [f"scores in % ({seeds}); {CHANCE_RULE}; a difference marked * lies outside its spread",
             "", "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in record["rows"]:
        chance = "–" if row["chance"] is None else f"{row['chance']:.1f}"
        cells = [VQA_LABELS.get(row["benchmark"], row["benchmark"]), row["kind"], str(row["n"]), chance,
                 *(f"{row['scores'][n]['mean']:.1f}" for n in names)]
        for n in names[1:]:
            d = row["diff"][n]
            cells.append(f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]{'*' if d['beyond_spread'] else ''}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reading(record: dict[str, Any]) -> str:
    """One plain line: per kind, what each encoder gained or lost against the first, only beyond the spread."""
    names = record["encoders"]

    def label(row: dict) -> str:
        return row["benchmark"] if row["kind"] == "all" else f"{row['benchmark']} {row['kind']}"

    parts = []
    for name in names[1:]:
        found = [f"{label(row)} {row['diff'][name]['mean']:+.1f}" for row in record["rows"] if row["diff"][name]["beyond_spread"]]
        if found:
            parts.append(f"{name} vs {names[0]}: beyond the spread on " + ", ".join(found) + " points; every other difference is within it")
        else:
            parts.append(f"{name} vs {names[0]}: no difference beyond the spread ({record['spread']}) on any benchmark or kind")
    at_chance = [label(row) for row in record["rows"] if row["chance"] is not None
                 and all(row["scores"][n]["mean"] <= row["chance"] for n in names)]
    if at_chance:
        parts.append("no encoder above chance on " + ", ".join(at_chance))
    return "reading: " + "; ".join(parts)


def write_comparison(record: dict[str, Any], out_dir: str | Path, title: str) -> tuple[Path, Path, Path]:
    """comparison.md (title, table, reading, figure), comparison.json and comparison.png in out_dir."""
    from .evaluation.report import VQA_LABELS, grouped_bar_chart

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = f"# {title}\n\n{comparison_markdown(record)}\n{reading(record)}\n\n![comparison](comparison.png)\n"
    (out / "comparison.md").write_text(markdown, encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    names = record["encoders"]
    groups = [f"{VQA_LABELS.get(row['benchmark'], row['benchmark'])}\n{row['kind'].replace('_', ' ')}" for row in record["rows"]]
    values = {n: [row["scores"][n]["mean"] for row in record["rows"]] for n in names}
    ranges = ({n: [(min(r["scores"][n]["per_seed"]), max(r["scores"][n]["per_seed"])) for r in record["rows"]] for n in names}
              if len(record["seeds"]) > 1 else None)
    grouped_bar_chart(out / "comparison.png", groups, values, [row["chance"] for row in record["rows"]],
                      title=title, ylabel="accuracy (%)", ranges=ranges, xlabel="benchmark / question kind")
    return out / "comparison.md", out / "comparison.json", out / "comparison.png"
