"""lmms-eval 0.7.3's own task files, as the reference of `--prompts lmms_eval` and `--mode lmms_eval`.

lmms-eval is installed with --no-deps (README). Its `lmms_eval/tasks/__init__.py` builds the whole task
registry (and imports the harness), so `task_utils` gives `lmms_eval.tasks` a bare package module pointing
at the same folder: every utils module is lmms-eval's own file. Task YAMLs are read with their
`include`s; `!function` tags are kept as their text (nothing is imported from a YAML here).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from pathlib import Path

import pytest
import yaml

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is installed with --no-deps by the README's test command")
TASKS_DIR = Path(lmms_eval.__file__).parent / "tasks"

# benchmark -> (task YAML, utils module, doc_to_text) of the lmms-eval task whose split we read
TASKS = {
    "vqav2": ("vqav2/vqav2_val.yaml", "vqav2.utils", "vqav2_doc_to_text"),
    "gqa": ("gqa/gqa.yaml", "gqa.utils", "gqa_doc_to_text"),
    "textvqa": ("textvqa/textvqa_val.yaml", "textvqa.utils", "textvqa_doc_to_text"),
    "vizwiz": ("vizwiz_vqa/vizwiz_vqa_val.yaml", "vizwiz_vqa.utils", "vizwiz_vqa_doc_to_text"),
    "pope": ("pope/pope.yaml", "pope.utils", "pope_doc_to_text"),
    "mme": ("mme/mme.yaml", "mme.utils", "mme_doc_to_text"),
    "scienceqa_img": ("scienceqa/scienceqa_img.yaml", "scienceqa.utils", "sqa_doc_to_text"),
    "mmbench": ("mmbench/mmbench_en_dev_static.yaml", "mmbench.en_utils", "mmbench_doc_to_text"),
    "mmvp": ("mmvp/mmvp.yaml", "mmvp.utils", "mmvp_doc_to_text"),
    "ai2d": ("ai2d/ai2d.yaml", "ai2d.utils", "ai2d_doc_to_text"),
    "chartqa": ("chartqa/chartqa.yaml", "chartqa.utils", "chartqa_doc_to_text"),
    "seedbench_img": ("seedbench/seedbench.yaml", "seedbench.utils", "seed_doc_to_text"),
}


def task_utils(module: str):
    if "lmms_eval.tasks" not in sys.modules or not hasattr(sys.modules["lmms_eval.tasks"], "__path__"):
        package = types.ModuleType("lmms_eval.tasks")
        package.__path__ = [str(TASKS_DIR)]
        sys.modules["lmms_eval.tasks"] = package
    return importlib.import_module(f"lmms_eval.tasks.{module}")


class _TaskLoader(yaml.SafeLoader):
    pass


_TaskLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def read_task_yaml(path: Path) -> dict:
    """A task YAML with its includes merged as lmms-eval's load_yaml_config does (the including file wins)."""
    config = yaml.load(path.read_text(), Loader=_TaskLoader)
    merged: dict = {}
    includes = config.pop("include", [])
    for include in reversed([includes] if isinstance(includes, str) else includes):
        target = Path(include) if Path(include).is_file() else path.parent / include
        merged.update(read_task_yaml(target))
    merged.update(config)
    return merged


def task_config(name: str) -> dict:
    return read_task_yaml(TASKS_DIR / TASKS[name][0])


def specific_kwargs(name: str, model: str = "llava_hf") -> dict | None:
    """The lmms_eval_specific_kwargs the task hands doc_to_text for `model` (api/task.py's rule: the model's
    own entry, else the mapping updated with its "default" entry)."""
    kwargs = task_config(name).get("lmms_eval_specific_kwargs")
    if kwargs is None:
        return None
    if model in kwargs:
        return kwargs[model]
    if "default" in kwargs:
        return {**kwargs, **kwargs["default"]}
    return kwargs


def reference_prompt(name: str, doc: dict) -> str:
    """lmms-eval's doc_to_text on `doc`, called as its task calls it."""
    _, module, function = TASKS[name]
    doc_to_text = getattr(task_utils(module), function)
    kwargs = specific_kwargs(name)
    if kwargs is None or len(inspect.signature(doc_to_text).parameters) == 1:
        return doc_to_text(doc)
    return doc_to_text(doc, kwargs)


def hf_docs(files: list[Path], cache_dir: Path) -> list[dict]:
    """The rows as lmms-eval's task sees them (`datasets`' parquet loader, in file order), images left out."""
    import datasets

    table = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", cache_dir=str(cache_dir))
    return list(table.remove_columns([c for c in table.column_names if c == "image"]))


def cli_reasoning_tags() -> list[list[str]]:
    """The --reasoning_tags default of lmms-eval's CLI, read from its argument parser's source."""
    import json
    import re

    source = (TASKS_DIR.parent / "__main__.py").read_text()
    match = re.search(r'"--reasoning_tags",.*?default=\'(\[.*?\]\])\'', source, re.DOTALL)
    return json.loads(match.group(1))


def cli_response(text: str) -> str:
    """An answer as lmms-eval's evaluator hands it to a task's process_results (api/reasoning.strip_reasoning_tags)."""
    from lmms_eval.api.reasoning import strip_reasoning_tags

    return strip_reasoning_tags(text, cli_reasoning_tags())
