"""Generation settings per benchmark: lmms-eval 0.7.3's task YAMLs + llava_hf's defaults; LLaVA-1.5's eval scripts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lmms_eval_reference import TASKS, TASKS_DIR, task_config
from reasonclip_llava.evaluation.settings import SETTINGS, generation_settings


def _llava_hf_defaults() -> dict:
    """The defaults llava_hf's generate_until fills in where a task is silent, read from its source."""
    source = (TASKS_DIR.parent / "models" / "chat" / "llava_hf.py").read_text()
    found = dict(re.findall(r'if "(\w+)" not in gen_kwargs:\s*\n\s*gen_kwargs\["\1"\] = ([\w.]+)', source))
    return {key: None if value == "None" else float(value) if "." in value else int(value) for key, value in found.items()}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_lmms_eval_settings_are_the_task_yaml_and_llava_hf_defaults(name):
    defaults = _llava_hf_defaults()
    assert defaults == {"max_new_tokens": 1024, "temperature": 0, "top_p": None, "num_beams": 1}
    task = {**defaults, **task_config(name).get("generation_kwargs", {})}
    ours = generation_settings(name, "lmms_eval")
    assert ours.max_new_tokens == task["max_new_tokens"]
    assert ours.temperature == task["temperature"] and not task.get("do_sample", False)
    assert ours.top_p == task["top_p"] and ours.num_beams == task["num_beams"]
    assert list(ours.until) == task.get("until", [])
    assert (ours.strip, ours.stop, ours.special_tokens) == (False, "tokenizer", "always")  # llava_hf's decoding


def _llava_script(name: str) -> str:
    import llava

    return (Path(llava.__file__).parent / "eval" / f"{name}.py").read_text()


def test_llava_settings_are_those_of_llava_eval_scripts():
    """scripts/v1_5/eval/*.sh pass --temperature 0 to model_vqa_loader (max_new_tokens default), model_vqa_science and
    model_vqa_mmbench (max_new_tokens=1024 in the generate call)."""
    pytest.importorskip("llava", reason="llava-torch is installed with --no-deps by the README's test command")
    loader = int(re.search(r'"--max_new_tokens", type=int, default=(\d+)', _llava_script("model_vqa_loader")).group(1))
    science = int(re.search(r"max_new_tokens=(\d+)", _llava_script("model_vqa_science")).group(1))
    mmbench = int(re.search(r"max_new_tokens=(\d+)", _llava_script("model_vqa_mmbench")).group(1))
    expected = {name: loader for name in SETTINGS["llava"]} | {"scienceqa": science, "scienceqa_img": science, "mmbench": mmbench}
    assert {name: s.max_new_tokens for name, s in SETTINGS["llava"].items()} == expected
    assert all(s.temperature == 0 and s.num_beams == 1 and s.strip and s.stop == "checkpoint" for s in SETTINGS["llava"].values())


def test_override_and_refusals():
    settings = generation_settings("POPE", "lmms_eval", max_new_tokens=7)
    assert settings.max_new_tokens == 7 and settings.source.endswith("--max-new-tokens 7")
    assert generation_settings("pope", "lmms_eval").max_new_tokens == 128
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generation_settings("pope", "llava", max_new_tokens=0)
    with pytest.raises(ValueError, match="scienceqa: no lmms_eval generation settings"):
        generation_settings("scienceqa", "lmms_eval")
