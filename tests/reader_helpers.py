"""Older transformers as readers of what this project writes: installed aside, run in a subprocess.

`reader_dir(version)` installs one pinned older transformers (and the few pure-Python packages whose
versions it pins and the main environment does not satisfy) into a cached `pip --target` directory under
`cache_root()` ($REASONCLIP_READER_CACHE, default ~/.cache/reasonclip-readers). torch, safetensors, numpy,
regex, PyYAML, ... come from the main environment. The install runs under a file lock into a staging
directory renamed into place, so two pytest processes that race wait for one another and a killed install
leaves nothing that looks complete. No network (pip fails) -> `ReaderUnavailable`, which tests skip on.

`load_reports(version, [(checkpoint, class_name), ...])` runs that transformers in one fresh interpreter with its
directory first on sys.path, loads each checkpoint with `class_name.from_pretrained` and returns what the
reader saw: its version, missing / unexpected / mismatched keys, top-level config values, the vision
tower(s) (`towers`: module path in that reader -> tensors named inside the vision transformer, and the
tower's output on probe pixels) and text-only logits on probe ids (PROBE_CODE). The tower is found
in the reader's own module tree (a sub-model whose config is the root's vision_config), and named inside
the vision transformer itself (`embeddings.*`, `encoder.layers.*`, ...): the same names in every version,
whether the reader nests it (`vision_model.*`, transformers < 5.6) or not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class ReaderUnavailable(RuntimeError):
    """An older transformers cannot be installed here (no network, no wheel); tests skip with this reason."""


@dataclass(frozen=True)
class ReaderSpec:
    version: str
    # Exact pins (what `pip install transformers==version` resolves to today, minus what the main env has).
    requirements: tuple[str, ...]


# transformers 4.57.x: huggingface-hub>=0.34,<1.0 and tokenizers>=0.22,<=0.23.0 (its setup.py; checked at
# import by dependency_versions_check), the main env has hub 2.x / tokenizers 0.23.3.
# transformers 5.0.0: huggingface-hub>=1.3,<2.0 (hub 1.x needs httpx, not in the main env), same tokenizers.
READERS: dict[str, ReaderSpec] = {
    "4.57": ReaderSpec("4.57.6", ("transformers==4.57.6", "huggingface-hub==0.36.2", "tokenizers==0.22.2")),
    "5.0": ReaderSpec("5.0.0", ("transformers==5.0.0", "huggingface-hub==1.33.0", "tokenizers==0.22.2",
                                "httpx==0.28.1", "httpcore==1.0.9")),
}
DEFAULT_CACHE = Path("~/.cache/reasonclip-readers")
INSTALLED_MARK = ".reasonclip-reader.json"


def cache_root() -> Path:
    return Path(os.environ.get("REASONCLIP_READER_CACHE") or DEFAULT_CACHE).expanduser()


def _dir_name(spec: ReaderSpec) -> str:
    digest = hashlib.sha256("\n".join(spec.requirements).encode()).hexdigest()[:10]
    return f"transformers-{spec.version}-{digest}"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a second pytest waits here until the first finished installing
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reader_dir(version: str) -> Path:
    """The installed target dir of READERS[version] (installed on first use; idempotent; race-safe)."""
    spec = READERS[version]
    root = cache_root()
    target = root / _dir_name(spec)
    if (target / INSTALLED_MARK).is_file():
        return target
    with _locked(root / f".{target.name}.lock"):
        if (target / INSTALLED_MARK).is_file():  # the process we waited for installed it
            return target
        shutil.rmtree(target, ignore_errors=True)  # a half install from before the mark existed
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
        try:
            command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                       "--disable-pip-version-check", "--target", str(staging), *spec.requirements]
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
                raise ReaderUnavailable(f"cannot install transformers {spec.version} into {root} "
                                        f"(pip: {lines[-1] if lines else result.returncode})")
            (staging / INSTALLED_MARK).write_text(json.dumps({"requirements": list(spec.requirements)}))
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


BLOCKED_INTEGRATIONS = ("kernels",)
# Runs inside the older transformers. argv: a JSON list of [checkpoint, class name], the output safetensors path.
READER_SCRIPT = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
# Optional integrations of the main env newer than the reader: `kernels` 0.19 breaks transformers 5.0.0 at
# import (hub_kernels builds a LayerRepository without a version). A user of that version has none of them.
for blocked in BLOCKED:
    sys.modules[blocked] = None  # importlib.util.find_spec -> None: transformers sees it as not installed
import torch, transformers
from transformers import PreTrainedModel
from transformers.utils import logging
logging.set_verbosity_error()
from safetensors.torch import save_file

jobs, out = json.loads(sys.argv[1]), sys.argv[2]
reports, tensors = [], {}
for number, (checkpoint, class_name) in enumerate(jobs):
    model, info = getattr(transformers, class_name).from_pretrained(checkpoint, output_loading_info=True, torch_dtype=torch.float32)
    model.eval()
    towers = {}
    for path, module in model.named_modules():
        if path and isinstance(module, PreTrainedModel) and module.config.model_type == model.config.vision_config.model_type \
                and not any(path.startswith(seen + ".") for seen in towers):
            towers[path] = module
    report = {"version": transformers.__version__, "class": type(model).__name__,
              "missing_keys": sorted(info.get("missing_keys", [])),
              "unexpected_keys": sorted(info.get("unexpected_keys", [])),
              "mismatched_keys": sorted(str(k[0] if isinstance(k, (list, tuple)) else k) for k in info.get("mismatched_keys", [])),
              "config": {k: v for k, v in model.config.to_dict().items() if not isinstance(v, dict)},
              "towers": {}}
    with torch.no_grad():
        for path, module in towers.items():
            inner = getattr(module, "vision_model", None)
            names_from = inner if isinstance(inner, torch.nn.Module) else module  # nested (< 5.6) or flat
            state = names_from.state_dict()
            report["towers"][path] = {"class": type(module).__name__, "nested": names_from is not module, "names": sorted(state)}
            for name, tensor in state.items():
                tensors[f"{number}|{path}|{name}"] = tensor.detach().contiguous().clone()
            tensors[f"{number}|{path}|@output"] = module(pixel_values=PIXELS(module.config)).last_hidden_state.contiguous()
        tensors[f"{number}|@logits"] = model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits.contiguous()
    reports.append(report)
save_file(tensors, out)
print(json.dumps(reports))
"""
# The same probe inputs in every version (the script and current_outputs run this code).
PROBE_CODE = r"""
import torch
IDS = torch.arange(1, 9)[None]  # text only: the LM's config (RoPE, norms, windows) as each version reads it
def PIXELS(vision_config):
    generator = torch.Generator().manual_seed(0)
    size = vision_config.image_size
    return torch.randn(1, vision_config.num_channels, size, size, generator=generator)
"""


def reader_script() -> str:
    return f"BLOCKED = {BLOCKED_INTEGRATIONS!r}\n" + PROBE_CODE + READER_SCRIPT


def reader_env(target: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    return env


def load_reports(version: str, jobs: list[tuple[str | Path, str]]) -> list[dict[str, Any]]:
    """What transformers READERS[version] loads from each (checkpoint, class name), in one interpreter.

    Each report: version, class, missing / unexpected / mismatched keys, top-level config values, `towers`
    (reader's module path -> {"tensors": {name inside the ViT: tensor}, "output": the tower's
    last_hidden_state on PROBE pixels}) and `logits` (text-only forward on PROBE ids).
    """
    from safetensors.torch import load_file

    target = reader_dir(version)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "readers.safetensors"
        argv = json.dumps([[str(checkpoint), class_name] for checkpoint, class_name in jobs])
        # -P: no script dir / cwd on sys.path, so the target dir is first and nothing of this checkout leaks in.
        result = subprocess.run([sys.executable, "-P", "-c", reader_script(), argv, str(out)],
                                capture_output=True, text=True, env=reader_env(target), cwd=scratch, timeout=600)
        if result.returncode != 0:
            raise AssertionError(f"transformers {READERS[version].version} failed to load {jobs}:\n{result.stderr[-3000:]}")
        reports = json.loads(result.stdout.strip().splitlines()[-1])
        loaded = load_file(str(out))
    for number, report in enumerate(reports):
        if report["version"] != READERS[version].version:
            raise AssertionError(f"reader {version}: imported transformers {report['version']}, not {READERS[version].version}")
        for path, tower in report["towers"].items():
            tower["tensors"] = {name: loaded[f"{number}|{path}|{name}"] for name in tower["names"]}
            tower["output"] = loaded[f"{number}|{path}|@output"]
        report["logits"] = loaded[f"{number}|@logits"]
    return reports


def current_report(model: torch.nn.Module) -> dict[str, Any]:
    """The same view of a model of the current transformers (towers: tensors + output, logits, config)."""
    from transformers import PreTrainedModel

    probe: dict[str, Any] = {}
    exec(PROBE_CODE, probe)  # noqa: S102 - our own constant: the readers run the very same code
    model.eval()
    vision_type = model.config.vision_config.model_type
    towers: dict[str, Any] = {}
    with torch.no_grad():
        for path, module in model.named_modules():
            if not path or not isinstance(module, PreTrainedModel) or module.config.model_type != vision_type:
                continue
            if any(path.startswith(seen + ".") for seen in towers):
                continue
            inner = getattr(module, "vision_model", None)
            names_from = inner if isinstance(inner, torch.nn.Module) else module
            towers[path] = {"class": type(module).__name__,
                            "tensors": {name: t.detach().clone() for name, t in names_from.state_dict().items()},
                            "output": module(pixel_values=probe["PIXELS"](module.config)).last_hidden_state}
        ids = probe["IDS"]
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    config = {k: v for k, v in model.config.to_dict().items() if not isinstance(v, dict)}
    return {"towers": towers, "logits": logits, "config": config}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bytes(a.contiguous().view(torch.uint8).numpy()) == bytes(b.contiguous().view(torch.uint8).numpy())


def tower_differences(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    """Names missing, extra or not bitwise equal (empty: the towers are the same)."""
    problems = [f"missing {n}" for n in sorted(expected.keys() - found.keys())]
    problems += [f"extra {n}" for n in sorted(found.keys() - expected.keys())]
    problems += [f"differs {n}" for n in sorted(expected.keys() & found.keys()) if not same_bits(expected[n], found[n])]
    return problems
