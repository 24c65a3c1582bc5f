"""Generation settings per benchmark and prompt style: the one place `eval vqa` takes them from.

`--prompts llava` uses the settings of LLaVA-1.5's eval scripts (scripts/v1_5/eval/*.sh run
model_vqa_loader, model_vqa_science or model_vqa_mmbench with --temperature 0; the loader's
max_new_tokens default is 128, the other two generate up to 1024). MMVP, AI2D and ChartQA have no LLaVA-1.5
script: they take the loader's defaults.

`--prompts lmms_eval` uses the task YAML's generation_kwargs of lmms-eval 0.7.3 and, where the YAML is
silent, its `llava_hf` model class defaults (max_new_tokens 1024, temperature 0, top_p None, num_beams 1).
It also decodes as llava_hf does: the tokenizer's eos is the only stop id, the tokenizer adds its special
tokens as it always does, and the answer is kept as decoded (not stripped). `until` is recorded as the
YAML gives it; llava_hf never cuts an answer at it, so neither does this package.

Every run is greedy (temperature 0 everywhere). `--max-new-tokens` overrides the length; the answers
file's header records the settings used. docs/EVAL.md has the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .benchmarks import canonical_benchmark


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1
    until: tuple[str, ...] = ()       # the task's stop strings, recorded (llava_hf does not apply them)
    strip: bool = True                # LLaVA strips the decoded answer; llava_hf keeps it as decoded
    stop: str = "checkpoint"          # eos ids: "checkpoint" (generation config + tokenizer) or "tokenizer" (llava_hf)
    special_tokens: str = "once"      # how the prompt becomes ids (generate.prepare_inputs): "once": LLaVA's eval scripts
    #                                   (text on each side of the image tokenized apart, as in training; no second BOS after
    #                                   a template's own); "always": llava_hf (the processor on the whole prompt, special tokens)
    source: str = ""                  # where the numbers come from

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature != 0:
            raise ValueError("only greedy decoding (temperature 0) is supported: answers must be reproducible")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "until": list(self.until)}


def _llava(max_new_tokens: int, script: str) -> GenerationSettings:
    return GenerationSettings(max_new_tokens, source=f"LLaVA-1.5 {script} --temperature 0")


def _lmms(task: str, max_new_tokens: int = 1024, top_p: float | None = None, until: tuple[str, ...] = ()) -> GenerationSettings:
    return GenerationSettings(max_new_tokens, top_p=top_p, until=until, strip=False, stop="tokenizer", special_tokens="always",
                              source=f"lmms-eval 0.7.3 {task} + llava_hf defaults")


_LOADER, _SCIENCE, _MMBENCH = "model_vqa_loader", "model_vqa_science", "model_vqa_mmbench"
_NO_SCRIPT = f"{_LOADER} defaults (no LLaVA-1.5 script)"
_ASSISTANT = ("ASSISTANT:",)

SETTINGS: dict[str, dict[str, GenerationSettings]] = {
    "llava": {
        "vqav2": _llava(128, _LOADER), "gqa": _llava(128, _LOADER), "textvqa": _llava(128, _LOADER),
        "vizwiz": _llava(128, _LOADER), "pope": _llava(128, _LOADER), "mme": _llava(128, _LOADER),
        "scienceqa": _llava(1024, _SCIENCE), "scienceqa_img": _llava(1024, _SCIENCE), "mmbench": _llava(1024, _MMBENCH),
        "mmvp": _llava(128, _NO_SCRIPT), "ai2d": _llava(128, _NO_SCRIPT), "chartqa": _llava(128, _NO_SCRIPT),
        "seedbench_img": _llava(128, _LOADER),
    },
    "lmms_eval": {
        "vqav2": _lmms("vqav2_val", 16), "gqa": _lmms("gqa", 16, top_p=1.0), "textvqa": _lmms("textvqa_val", until=_ASSISTANT),
        "vizwiz": _lmms("vizwiz_vqa_val", until=_ASSISTANT), "pope": _lmms("pope", 128, top_p=1.0),
        "mme": _lmms("mme", 16, top_p=1.0), "scienceqa_img": _lmms("scienceqa_img", 16),
        "mmbench": _lmms("mmbench_en_dev", 1024, top_p=1.0, until=_ASSISTANT), "mmvp": _lmms("mmvp", 16),
        "ai2d": _lmms("ai2d", 16), "chartqa": _lmms("chartqa", 16), "seedbench_img": _lmms("seedbench", until=_ASSISTANT),
    },
}


def generation_settings(benchmark: str, prompts: str = "llava", max_new_tokens: int | None = None) -> GenerationSettings:
    """The settings `eval vqa` generates `benchmark` with under `prompts`; max_new_tokens overrides the length."""
    name = canonical_benchmark(benchmark)
    table = SETTINGS.get(prompts)
    if table is None:
        raise ValueError(f"prompts must be one of {tuple(SETTINGS)}, got {prompts!r}")
    if name not in table:
        raise ValueError(f"{name}: no {prompts} generation settings (lmms-eval has no task for it)")
    settings = table[name]
    if max_new_tokens is not None:
        settings = replace(settings, max_new_tokens=max_new_tokens, source=f"{settings.source}; --max-new-tokens {max_new_tokens}")
    return settings
