"""Markdown tables of the issue-24 studies from their JSON results (bench/results/; docs/LEARNING_STUDY.md).

    python bench/study_tables.py --category bench/results/category_heads --data /tmp/cat/data \
        --mllm bench/results/mllm_encoders [bench/results/mllm_encoders_tower]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CATEGORIES = ("S", "A", "H", "T", "P")


def held_out_majority(data: Path) -> dict[str, float]:
    """Per category, the majority rule's held-out accuracy (the image head's chance)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(data / "eval.parquet").to_pylist()
    share = {c: sum(c in r["image_categories"] for r in rows) / len(rows) for c in CATEGORIES}
    return {c: max(p, 1 - p) for c, p in share.items()}


def category_tables(folder: Path, majority: dict[str, float] | None) -> str:
    results = {json.loads(p.read_text())["seed"]: json.loads(p.read_text())["results"] for p in sorted(folder.glob("results_seed*.json"))}
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["| seed | run | descriptive R@1 | reasoning R@1 | 5-way | 5-way S / A / H / T / P |", "|---|---|---:|---:|---:|---|"]
    for seed, runs in results.items():
        for name, r in runs.items():
            lines.append(f"| {seed} | {name} | {pct(r['descriptive R@1'])} | {pct(r['reasoning R@1'])} | {pct(r['reasoning 5-way'])} | "
                         + " / ".join(pct(r[f"5-way {c}"]) for c in CATEGORIES) + " |")
    lines += ["", "| seed | run | text head (majority) | image head S / A / H / T / P | probe S / A / H / T / P |", "|---|---|---|---|---|"]
    for seed, runs in results.items():
        for name, r in runs.items():
            if "probe S" not in r:
                continue
            text = f"{pct(r['text head'])} ({pct(r['text majority'])})" if "text head" in r else "– (no heads)"
            image = " / ".join(pct(r[f"image head {c}"]) for c in CATEGORIES) if "image head S" in r else "–"
            lines.append(f"| {seed} | {name} | {text} | {image} | " + " / ".join(pct(r[f"probe {c}"]) for c in CATEGORIES) + " |")
    if majority:
        lines.append("| | majority rule (chance) | | " + " / ".join(pct(majority[c]) for c in CATEGORIES) + " | same |")
    return "\n".join(lines)


def mllm_table(folder: Path) -> str:
    records = {json.loads(p.read_text())["seed"]: json.loads(p.read_text())["record"] for p in sorted(folder.glob("results_seed*.json"))}
    if not records:
        return "(no results)"
    first = next(iter(records.values()))
    names = first["encoders"]
    header = ["kind", "n", "chance %", *(f"{n} % seed {s}" for s in records for n in names), *(f"{names[1]} − {names[0]} seed {s}" for s in records)]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|" + "---:|" * (len(header) - 3)]
    for index, row in enumerate(first["rows"]):
        cells = [f"{row['benchmark']} {row['kind']}", str(row["n"]), f"{row['chance']:.1f}"]
        cells += [f"{records[s]['rows'][index]['scores'][n]['mean']:.1f}" for s in records for n in names]
        for s in records:
            d = records[s]["rows"][index]["diff"][names[1]]
            cells.append(f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]{'*' if d['beyond_spread'] else ''}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--category", type=Path)
    parser.add_argument("--data", type=Path, help="the category study's data folder (held-out majority per category)")
    parser.add_argument("--mllm", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    if args.category:
        print(category_tables(args.category, held_out_majority(args.data) if args.data else None), "\n")
    for folder in args.mllm:
        print(f"{folder.name}\n{mllm_table(folder)}\n")


if __name__ == "__main__":
    main()
