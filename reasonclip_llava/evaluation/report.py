"""Comparison reports: a markdown table (rows = models, columns = headline metrics) and a bar chart.

Inputs are result JSONs or folders holding them, in either format:
- encoder runs (`reasonclip eval clip`): {"format": "reasonclip.encoder_eval/1", "model", "benchmark",
  "headline": {column: value}, "subsets", ...};
- VQA summaries (`{benchmark}_summary.json` of the scoring code) or any JSON with {"benchmark",
  "accuracy" | "score"} and optionally "model".
A folder argument may be labelled, "stage1=runs/stage1/eval", to name its row; otherwise the model is
the JSON's "model", else the folder's name. A file given explicitly must be a result; JSONs in a folder
that are not results (configs, tokenizer files) are skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

ENCODER_FORMAT = "reasonclip.encoder_eval/1"

# Column labels for VQA summaries (benchmark key -> label); unknown keys are shown as they are.
VQA_LABELS = {
    "vqav2": "VQAv2", "gqa": "GQA", "textvqa": "TextVQA", "vizwiz": "VizWiz", "pope": "POPE", "mme": "MME",
    "scienceqa": "ScienceQA-IMG", "mmbench": "MMBench", "mmvp": "MMVP", "ai2d": "AI2D", "chartqa": "ChartQA",
    "seed": "SEED", "mmmu": "MMMU",
}
# Chance level (%) of a benchmark's headline, where one answer among a fixed number is picked: RCLIP-Bench
# 1 of 5 captions, SugarCrepe / VALSE caption vs one negative, POPE yes / no. Open-answer benchmarks have none.
CHANCE = {"rclip_bench": 20.0, "sugarcrepe": 50.0, "valse": 50.0, "pope": 50.0}


@dataclass(frozen=True)
class ResultRow:
    """One number for the report: a model's headline metric on one benchmark."""

    model: str
    benchmark: str  # canonical key, e.g. "sugarcrepe_pp", "vqav2"
    metric: str  # column label, e.g. "SugarCrepe++ ITT", "VQAv2"
    value: float | None
    source: Path
    kind: str  # "encoder" or "vqa"
    record: dict


def _rows_from_record(record, source: Path, label: str | None) -> list[ResultRow]:
    if not isinstance(record, dict) or not isinstance(record.get("benchmark"), str):
        return []
    model = label or record.get("model") or source.parent.name
    if record.get("format") == ENCODER_FORMAT and isinstance(record.get("headline"), dict):
        return [ResultRow(str(model), record["benchmark"], metric, _number(value), source, "encoder", record)
                for metric, value in record["headline"].items()]
    for key in ("accuracy", "score"):
        if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool):
            metric = VQA_LABELS.get(record["benchmark"], record["benchmark"])
            return [ResultRow(str(model), record["benchmark"], metric, float(record[key]), source, "vqa", record)]
    return []


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _split_label(argument: str | Path) -> tuple[str | None, Path]:
    text = str(argument)
    if "=" in text and not Path(text).exists():
        label, path = text.split("=", 1)
        if label and "/" not in label:
            return label, Path(path)
    return None, Path(text)


def load_result_rows(inputs: Iterable[str | Path]) -> list[ResultRow]:
    """Headline numbers from result files / folders (see the module docstring for accepted formats)."""
    rows: list[ResultRow] = []
    for argument in inputs:
        label, path = _split_label(argument)
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from None
            found = _rows_from_record(record, path, label)
            if not found:
                raise ValueError(f"{path}: not a result JSON (needs 'benchmark' and 'headline', 'accuracy' or 'score')")
        elif path.is_dir():
            found = []
            for candidate in sorted(path.rglob("*.json")):
                try:
                    record = json.loads(candidate.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue  # not ours: a folder can hold any JSON
                found += _rows_from_record(record, candidate, label or (path.name if "model" not in record else None))
            if not found:
                raise ValueError(f"{path}: no result JSON found (encoder runs or *_summary.json)")
        else:
            raise FileNotFoundError(f"result file or folder not found: {path}")
        rows += found
    return rows


def _latest(rows: Sequence[ResultRow]) -> dict[tuple[str, str], ResultRow]:
    # The same model/metric twice (a re-run): the most recently written file wins.
    table: dict[tuple[str, str], ResultRow] = {}
    for row in sorted(rows, key=lambda r: r.source.stat().st_mtime):
        table[(row.model, row.metric)] = row
    return table


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _with_chance(metric: str, table: dict[tuple[str, str], ResultRow]) -> str:
    known = {chance_of(row) for row in table.values() if row.metric == metric} - {None}
    return f"{metric} (chance {known.pop():.0f}%)" if len(known) == 1 else metric


def _markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _subset_tables(rows: Sequence[ResultRow], models: list[str]) -> list[str]:
    """Per-benchmark detail for encoder runs: subsets of the primary metric (or all metrics of one subset)."""
    lines: list[str] = []
    records: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row.kind == "encoder":
            records.setdefault(row.benchmark, {})[row.model] = row.record
    for benchmark, by_model in records.items():
        first = next(iter(by_model.values()))
        subsets = list(first.get("subsets", {}))
        if not subsets:
            continue
        metrics = [k for k in first["subsets"][subsets[0]] if k != "n" and not k.startswith("n_")]
        if len(subsets) == 1:
            header, pick = ["Model", *metrics], lambda record: [record["subsets"].get(subsets[0], {}).get(m) for m in metrics]
        else:
            metric = metrics[0]
            header = ["Model", *subsets, f"macro {metric}", f"micro {metric}"]
            pick = lambda record: [record["subsets"].get(s, {}).get(metric) for s in subsets] + \
                [record.get("macro", {}).get(metric), record.get("micro", {}).get(metric)]
        body = [[model, *map(_fmt, pick(by_model[model]))] for model in models if model in by_model]
        n_items = first.get("n_items")
        lines += ["", f"### {benchmark} ({n_items} items)", "", *_markdown_table(header, body)]
    return lines


def _aggregations(rows: Iterable[ResultRow]) -> dict[str, str]:
    """Column label -> how its number was averaged / which scorer mode produced it (first record that says)."""
    found: dict[str, str] = {}
    for row in rows:
        text = (row.record.get("aggregation") or {}).get(row.metric) if row.kind == "encoder" else row.record.get("mode")
        if text and row.metric not in found:
            found[row.metric] = text if row.kind == "encoder" else f"scored in mode '{text}'"
    return found


def write_report(inputs: Sequence[str | Path], out_dir: str | Path, *, title: str = "Evaluation report") -> tuple[Path, Path]:
    """Write report.md and report.png to out_dir from result JSONs / folders; returns both paths."""
    rows = load_result_rows(inputs)
    table = _latest(rows)
    models = list(dict.fromkeys(row.model for row in rows))
    metrics = list(dict.fromkeys(row.metric for row in rows))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    cells = [[model, *(_fmt(table[(model, m)].value) if (model, m) in table else "–" for m in metrics)] for model in models]
    header = ["Model", *(_with_chance(m, table) for m in metrics)]
    plotted = [m for m in metrics if all(0 <= (row.value or 0) <= 100 for row in table.values() if row.metric == m)]
    lines = [f"# {title}", "",
             f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} from {len({r.source for r in rows})} result files. "
             "Values are percentages (accuracy, recall@1), except MME (score); a column with a fixed number of "
             "options names its chance level.", "",
             *_markdown_table(header, cells), "", "![headline metrics](report.png)", ""]
    if len(plotted) < len(metrics):
        lines += [f"Not plotted (not a percentage): {', '.join(m for m in metrics if m not in plotted)}.", ""]
    aggregation = _aggregations(table.values())
    if aggregation:
        lines += ["## How each headline is computed", "", *(f"- {metric}: {text}" for metric, text in aggregation.items()), ""]
    details = _subset_tables(list(table.values()), models)
    if details:
        lines += ["## Per-subset results", *details, ""]
    lines += ["## Sources", "", *sorted({f"- `{row.model}`: {row.source}" for row in table.values()}), ""]
    markdown_path = out_dir / "report.md"
    markdown_path.write_text("\n".join(lines), encoding="utf-8")
    png_path = _bar_chart(table, models, plotted, out_dir / "report.png", title)
    return markdown_path, png_path


def chance_of(row: ResultRow) -> float | None:
    """Chance level in percent of a row's metric: the record's own "chance", else the benchmark's known one."""
    value = _number(row.record.get("chance"))
    return value if value is not None else CHANCE.get(row.benchmark)


def _bar_chart(table: dict[tuple[str, str], ResultRow], models: list[str], metrics: list[str], path: Path, title: str) -> Path:
    values = {model: [table[(model, m)].value if (model, m) in table else None for m in metrics] for model in models}
    chance = []
    for metric in metrics:
        known = {chance_of(row) for row in table.values() if row.metric == metric} - {None}
        chance.append(known.pop() if len(known) == 1 else None)
    return grouped_bar_chart(path, metrics, values, chance, title=title, ylabel="score (%: accuracy, recall@1)")


def grouped_bar_chart(path: str | Path, groups: Sequence[str], values: dict[str, Sequence[float | None]],
                      chance: Sequence[float | None], *, title: str, ylabel: str,
                      ranges: dict[str, Sequence[tuple[float, float]]] | None = None, xlabel: str = "benchmark") -> Path:
    """Bars per group (x) and series (colour) on a 0-100 axis, each group's chance level as a dashed labelled line.

    ranges: optional (low, high) per series and group, drawn as error bars (e.g. the range over seeds).
    Sized for a README at natural size: ~0.9 inch per group, 10 pt labels, 110 dpi.
    """
    # Figure + Agg canvas directly: no pyplot global state, no backend switch for the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(values)
    figure = Figure(figsize=(min(16.0, max(6.0, 0.35 * len(groups) * max(2, len(names)) + 2.5)), 4.8), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        positions = [i + (index - (len(names) - 1) / 2) * width for i in range(len(groups))]
        heights = [0.0 if v is None else v for v in values[name]]
        errors = None
        if ranges and name in ranges:
            errors = [[h - low for h, (low, _) in zip(heights, ranges[name])], [high - h for h, (_, high) in zip(heights, ranges[name])]]
        axes.bar(positions, heights, width=width, label=name, yerr=errors, capsize=3 if errors else 0)
    chance_drawn = False
    for i, level in enumerate(chance):
        if level is None:
            continue
        axes.hlines(level, i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1.2,
                    label=None if chance_drawn else "chance")
        axes.annotate(f"chance {level:.0f}%", (i + 0.45, level), xytext=(0, 2), textcoords="offset points", ha="right",
                      va="bottom", fontsize=8)
        chance_drawn = True
    axes.set_xticks(range(len(groups)))
    longest = max((len(line) for group in groups for line in group.splitlines()), default=0)
    rotate = longest > 10 and not any("\n" in group for group in groups)  # two-line labels stay level
    axes.set_xticklabels(groups, rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=9 if longest <= 14 else 8)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel, fontsize=10)
    axes.set_ylim(0, 105)
    axes.set_title(title, fontsize=11)
    if names or chance_drawn:
        axes.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)
