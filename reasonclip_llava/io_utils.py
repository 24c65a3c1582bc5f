"""Reading and writing checkpoints safely: nothing planted runs, nothing lost, nothing silently wrong.

Reading: `check_model_files` / `check_safetensors` / `check_state_dir` look at files before anything
loads them. A safetensors file is recognised by its header (8-byte length + JSON, offsets inside the
file), never by sniffing a first byte; only when that fails is it told apart from a pickle. A pickle
(bare or torch.save's zip) is never run to find out what it is: `scan_pickle` reads it opcode by opcode
and refuses every global outside `SAFE_PICKLE_GLOBALS` (tensors, numbers, containers, numpy RNG states,
DeepSpeed's optimizer bookkeeping), so a library that later unpickles the file (DeepSpeed does with
weights_only=False) can only rebuild data. `load_pretrained_strict` refuses weights that do not match the
config (missing, unexpected, mismatched), configs with impossible sizes, and non-finite weights.

Writing: every command that writes a model directory goes through `atomic_directory`: a non-empty target
is refused unless the caller asks to overwrite, an output that is (or contains) an input is refused, a
symlinked output is written into its target, and the files go to a sibling staging dir (the mode
save_pretrained gives) that is renamed into place at the end, so a crash (or a full disk, also inside
safetensors) never leaves half a checkpoint; staging dirs of killed writers are removed by the next one.
A training run claims its output directory (`claim_run_directory`, an flock) so two runs cannot share it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import pickle
import pickletools
import re
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

# errno values that mean "the disk (or quota) is full", turned into one line instead of a traceback.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# What torch.save writes (a zip archive; PK\x05\x06 is an empty one) and what a bare pickle starts with
# (the PROTO opcode and a protocol number); used only after a file failed to read as what it should be.
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit
RUN_LOCK = ".reasonclip.lock"  # the claim of a run directory; never counts as content

# Globals a training-state pickle may name: torch's own weights-only allowlist (added below), numpy's
# RNG state pieces (accelerate and the HF Trainer save them), DeepSpeed's optimizer bookkeeping.
SAFE_PICKLE_GLOBALS = frozenset({
    "collections.OrderedDict", "collections.Counter", "builtins.set", "builtins.frozenset", "builtins.slice",
    "builtins.complex", "builtins.bytearray", "_codecs.encode",
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "torch.Size", "torch.device",
    "torch.serialization._get_layout",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address",
})


def _torch_weights_only_globals() -> frozenset[str]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
    except ImportError:  # an older / newer torch: the list above still covers state dicts
        return frozenset()
    return frozenset(_get_allowed_globals())


class UnreadableFileError(ValueError):
    """A weight / state file that cannot be read as what it should be (the message names the file)."""


class WriteFailedError(OSError):
    """Writing a directory failed (e.g. the disk is full); nothing that existed before was touched."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunDirectoryInUseError(FileExistsError):
    """Another process holds the claim of a run directory."""


# --------------------------------------------------------------------------- reading
def looks_like_path(name: str | Path) -> bool:
    """True for strings a user means as a local path (absolute, ./, ../, ~, or more than one '/')."""
    text = str(name)
    return isinstance(name, Path) or text.startswith(("/", "./", "../", "~", ".\\")) or text.count("/") > 1 or os.sep in text.replace("/", "")


def require_existing(name_or_path: str | Path, what: str) -> None:
    """A local path that does not exist is named as such (transformers would call it a bad Hub repo id)."""
    if looks_like_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(f"{what} {name_or_path}: path does not exist")


def safetensors_header(path: str | Path) -> dict[str, Any] | None:
    """The JSON header of a safetensors file, or None when the file does not start with one.

    The format: an 8-byte little-endian header length, then that many bytes of UTF-8 JSON (an object).
    """
    path = Path(path)
    size = _size(path)
    with _open(path) as handle:
        length_bytes = handle.read(8)
        if len(length_bytes) < 8:
            return None
        length = int.from_bytes(length_bytes, "little")
        if length < 2 or length > min(SAFETENSORS_MAX_HEADER, size - 8):
            return None
        text = handle.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def check_safetensors(path: str | Path) -> None:
    """Raise UnreadableFileError (one line, naming the file) unless `path` is a complete safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if _size(path) == 0:
        raise UnreadableFileError(f"{path}: empty file, expected safetensors weights")
    header = safetensors_header(path)
    if header is None:
        if pickle_kind(path):
            raise UnreadableFileError(f"{path}: a pickle (torch.save) file where safetensors is expected; it is not unpickled")
        raise UnreadableFileError(f"{path}: not a complete safetensors file (truncated or corrupt: no valid header)")
    data_size = _size(path) - 8 - int.from_bytes(_head(path), "little")
    ends = [entry.get("data_offsets", [0, 0])[1] for key, entry in header.items() if key != "__metadata__" and isinstance(entry, dict)]
    if max(ends, default=0) > data_size:
        raise UnreadableFileError(f"{path}: not a complete safetensors file (truncated: its header indexes {max(ends)} bytes, {data_size} are there)")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as error:  # SafetensorError: bad dtype, overlapping offsets, ...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableFileError(f"{path}: not a complete safetensors file (truncated or corrupt: {reason})") from None


def pickle_kind(path: str | Path) -> str | None:
    """'zip' (torch.save), 'pickle' (a bare pickle stream, protocol 2+) or None, from the first bytes."""
    head = _head(Path(path))
    if head.startswith(ZIP_MAGICS):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return None


def scan_pickle(path: str | Path) -> None:
    """Raise UnreadableFileError unless `path` is a torch.save archive (or bare pickle) that only rebuilds data.

    Nothing is unpickled: every opcode is read with pickletools, and a global outside SAFE_PICKLE_GLOBALS
    (os.system, builtins.eval, any class with code behind it), a global built indirectly, a copyreg
    extension or a TorchScript archive is refused, naming the file and the global.
    """
    path = Path(path)
    if _size(path) == 0:
        raise UnreadableFileError(f"{path}: empty file, expected a torch.save archive")
    kind = pickle_kind(path)
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
                    raise UnreadableFileError(f"{path}: a TorchScript archive (it carries code); refused, it is not loaded")
                streams = [(name, archive.read(name)) for name in names if name.endswith(".pkl")]
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            if isinstance(error, UnreadableFileError):
                raise
            raise UnreadableFileError(f"{path}: truncated or not a torch.save archive ({error})") from None
        if not streams:
            raise UnreadableFileError(f"{path}: a zip archive without data.pkl, not a torch.save file")
        for _, data in streams:
            _scan_pickle_stream(path, data, consecutive=False)
        return
    if kind == "pickle":
        _scan_pickle_stream(path, path.read_bytes(), consecutive=True)
        return
    if safetensors_header(path) is not None:
        raise UnreadableFileError(f"{path}: a safetensors file where a torch.save archive is expected")
    raise UnreadableFileError(f"{path}: truncated or not a torch.save archive")


_ALLOWED_GLOBALS: frozenset[str] | None = None
_KEEPS_STACK = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "PROTO"})


def _allowed_globals() -> frozenset[str]:
    global _ALLOWED_GLOBALS
    if _ALLOWED_GLOBALS is None:
        _ALLOWED_GLOBALS = SAFE_PICKLE_GLOBALS | _torch_weights_only_globals()
    return _ALLOWED_GLOBALS


def _python3_name(module: str, name: str) -> str:
    """What the unpickler imports for a protocol-2 name (Python 2 spellings such as __builtin__ are mapped)."""
    import _compat_pickle

    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _is_allowed(name: str) -> bool:
    return name in _allowed_globals() or re.fullmatch(r"numpy\.dtypes\.\w+DType", name) is not None


def _scan_pickle_stream(path: Path, data: bytes, consecutive: bool) -> None:
    """Walk the opcodes of one pickle (or of back-to-back pickles), simulating only the stack's shape."""
    stream = io.BytesIO(data)
    while True:
        stack: list[Any] = []
        marks: list[int] = []
        memo: dict[int, Any] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                name = opcode.name
                found = None
                if name in ("GLOBAL", "INST"):
                    found = _python3_name(*str(arg).split(" ", 1))
                elif name == "STACK_GLOBAL":
                    if len(stack) < 2 or not all(isinstance(part, str) for part in stack[-2:]):
                        raise UnreadableFileError(f"{path}: a pickle that builds the name of what it imports; refused, it is not unpickled")
                    found = f"{stack[-2]}.{stack[-1]}"
                elif name.startswith("EXT"):
                    raise UnreadableFileError(f"{path}: a pickle that imports through the copyreg registry; refused, it is not unpickled")
                if found is not None and not _is_allowed(found):
                    raise UnreadableFileError(
                        f"{path}: a pickle that would import and call {found} when loaded; refused, it is not unpickled "
                        "(training state holds tensors and numbers only)"
                    )
                _stack_effect(opcode, arg, stack, marks, memo)
        except UnreadableFileError:
            raise
        except Exception as error:  # a cut-off stream, raw bytes where opcodes should be, a malformed pickle
            raise UnreadableFileError(f"{path}: truncated or not a pickle ({type(error).__name__}: {error})") from None
        if not consecutive or stream.tell() >= len(data):
            return


_MARK = object()


def _stack_effect(opcode: Any, arg: Any, stack: list[Any], marks: list[int], memo: dict[int, Any]) -> None:
    """Apply an opcode's stack effect; strings are kept (STACK_GLOBAL reads them), everything else is None."""
    name = opcode.name
    if name == "MARK":
        marks.append(len(stack))
        stack.append(_MARK)
        return
    if name in _KEEPS_STACK:
        if name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name.endswith("PUT"):
            memo[arg] = stack[-1]
        return
    before = opcode.stack_before
    if pickletools.markobject in before or (name == "POP" and stack and stack[-1] is _MARK):
        if not marks:
            raise ValueError(f"{name} without a MARK")
        del stack[marks.pop():]
        below = before.index(pickletools.markobject) if pickletools.markobject in before else 0
    else:
        below = len(before)
    if below > len(stack):
        raise ValueError(f"{name} on a stack of {len(stack)}")
    top = stack[-1] if stack else None
    del stack[len(stack) - below:]
    if name == "DUP":
        stack.extend([top, top])
        return
    for _ in opcode.stack_after:
        if isinstance(arg, str) and ("UNICODE" in name or "STRING" in name):
            stack.append(arg)
        elif name.endswith("GET"):
            stack.append(memo.get(arg))
        else:
            stack.append(None)


def check_json_file(path: str | Path) -> None:
    """Raise UnreadableFileError unless `path` is UTF-8 JSON (a pickle there is named as one)."""
    path = Path(path)
    try:
        with _open(path) as handle:
            json.loads(handle.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        if pickle_kind(path):
            raise UnreadableFileError(f"{path}: a pickle where JSON is expected; it is not unpickled") from None
        raise UnreadableFileError(f"{path}: not valid JSON ({error})") from None


def check_state_file(path: str | Path) -> None:
    """One file of a checkpoint, by what its name says it must be (safetensors, torch.save, JSON, other)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        check_safetensors(path)
    elif path.suffix in PICKLE_SUFFIXES:
        scan_pickle(path)
    elif path.suffix == ".json":
        check_json_file(path)
    elif pickle_kind(path):  # text, YAML, scripts, DeepSpeed's `latest`: never a pickle
        raise UnreadableFileError(f"{path}: a pickle where a {path.suffix or 'text'} file is expected; it is not unpickled")


def check_state_dir(directory: str | Path, recursive: bool = True) -> None:
    """Check every file of a checkpoint dir (recursively) before anything is loaded from it."""
    directory = Path(directory)
    for path in sorted(directory.rglob("*") if recursive else directory.iterdir()):
        if path.is_file() and path.name != RUN_LOCK:
            check_state_file(path)


def check_model_files(name_or_path: str | Path, what: str = "model") -> None:
    """Before from_pretrained: a missing local path, an unreadable weight file or pickle-only weights fail in one line.

    Hub ids (not local paths) pass through: transformers reports those itself.
    """
    require_existing(name_or_path, what)
    directory = Path(name_or_path).expanduser()
    if not directory.is_dir():
        return
    weights = sorted(directory.glob("*.safetensors"))
    for path in weights:
        check_safetensors(path)
    pickles = [p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES and p.name.startswith(("pytorch_model", "model", "adapter_model"))]
    if not weights and pickles:
        raise UnreadableFileError(
            f"{pickles[0]}: {what} {directory} has only pickle weights; convert them to safetensors (pickle files are never unpickled)"
        )


def torch_load_weights_only(path: str | Path) -> Any:
    """torch.load of a checked file with weights_only=True; a refusal is one line of ours (PyTorch's invites
    weights_only=False, which would run whatever the file carries)."""
    import torch

    scan_pickle(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UnreadableFileError(f"{path}: {load_error_text(error)}") from None


def load_error_text(error: BaseException) -> str:
    """One line for a failed torch.load / safetensors load; PyTorch's weights-only advice is never passed on."""
    text = str(error)
    if "Weights only load failed" in text or isinstance(error, pickle.UnpicklingError):
        found = re.search(r"(?:GLOBAL|global:?) ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"a pickle with objects other than tensors and numbers{what}; refused, it is not unpickled"
    detail = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def first_non_finite(named_tensors: Iterable[tuple[str, Any]]) -> tuple[str, int] | None:
    """(name, count) of the first floating tensor holding NaN or inf, or None when all are finite."""
    import torch

    for name, tensor in named_tensors:
        if tensor.is_floating_point() and tensor.device.type != "meta" and tensor.numel():
            bad = (~torch.isfinite(tensor.detach())).sum().item()
            if bad:
                return name, int(bad)
    return None


def require_finite(named_tensors: Iterable[tuple[str, Any]], what: str) -> None:
    """ValueError naming the first tensor with NaN / inf values (a model with them is no result)."""
    found = first_non_finite(named_tensors)
    if found is not None:
        raise ValueError(f"{what}: tensor '{found[0]}' holds {found[1]} NaN/inf value(s); refusing non-finite weights")


def load_pretrained_strict(model_class: Any, name_or_path: str | Path, what: str, allow_unexpected: bool = False,
                           tolerated: Any = None, **kwargs: Any):
    """model_class.from_pretrained, refusing what would make a wrong model pass as the checkpoint.

    Refused, in one line: impossible config values (value_checks.check_model_config), a config the class
    cannot be built from, missing / mismatched / unexpected weights (`tolerated(unexpected_keys)` names
    the unexpected keys that are no error: a released checkpoint's training heads, the text half of a dual
    encoder under a vision model) and non-finite weights. transformers only logs such keys and
    initialises the missing ones randomly.
    """
    from transformers.utils import logging as hf_logging

    from .value_checks import check_model_config

    check_model_files(name_or_path, what)
    config = _read_config(name_or_path)
    if config is not None:
        check_model_config(config, f"{what} {name_or_path}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the report is ours, in one line
    kwargs.setdefault("ignore_mismatched_sizes", True)  # mismatches come back in the loading info, reported below
    try:
        model, info = model_class.from_pretrained(str(name_or_path), output_loading_info=True, **kwargs)
    except (OSError, UnreadableFileError):
        raise
    except (ZeroDivisionError, RuntimeError, TypeError, AttributeError, IndexError, KeyError, ValueError) as error:
        detail = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"{what} {name_or_path}: cannot build {model_class.__name__} from its config.json "
                         f"({type(error).__name__}: {detail})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if tolerated is not None and info.get("unexpected_keys"):
        skip = set(tolerated(info["unexpected_keys"]))
        info = {**info, "unexpected_keys": [k for k in info["unexpected_keys"] if k not in skip]}
    kinds = ("missing_keys", "mismatched_keys") if allow_unexpected else ("missing_keys", "unexpected_keys", "mismatched_keys")
    problems = {kind: info[kind] for kind in kinds if info.get(kind)}
    if problems:
        raise ValueError(f"{what} {name_or_path}: weights do not match {model_class.__name__}: {short_key_report(problems)}")
    require_finite(model.state_dict().items(), f"{what} {name_or_path}")
    return model


def _read_config(name_or_path: str | Path):
    """The checkpoint's config (None when it cannot be read here; from_pretrained then says why)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(name_or_path))
    except Exception:  # noqa: BLE001 - an unknown model_type or a Hub id offline: not this check's to report
        return None


def short_key_report(problems: dict[str, Any]) -> str:
    """{'missing_keys': [...], ...} -> 'missing_keys=3 ['a', 'b', 'c']...' (first three of each)."""
    parts = []
    for kind, keys in problems.items():
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in keys)
        parts.append(f"{kind}={len(names)} {names[:3]}{'...' if len(names) > 3 else ''}")
    return "; ".join(parts)


def read_utf8(path: str | Path) -> str:
    """A text file's contents; bytes that are not UTF-8 fail in one line naming the file, line and column."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise UnreadableFileError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} at column {column}); re-encode the file as UTF-8"
        ) from None


def _open(path: Path):  # noqa: ANN202
    try:
        return open(path, "rb")
    except OSError as error:
        raise UnreadableFileError(f"{path}: cannot be read ({error.strerror or error})") from None


def _head(path: Path, size: int = 8) -> bytes:
    with _open(path) as handle:
        return handle.read(size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as error:
        raise UnreadableFileError(f"{path}: cannot be read ({error.strerror or error})") from None


# --------------------------------------------------------------------------- writing
def is_non_empty_dir(path: Path) -> bool:
    """A directory with content (a run's claim file alone is none)."""
    return path.is_dir() and any(child.name != RUN_LOCK for child in path.iterdir())


def output_target(out_dir: str | Path) -> Path:
    """Where writing `out_dir` lands: a symlink is followed, so the link stays and its target is replaced."""
    out_dir = Path(out_dir).expanduser()
    return out_dir.resolve() if out_dir.is_symlink() else out_dir


def refuse_existing(out_dir: str | Path, overwrite: bool, flag: str = "--overwrite", sources: Iterable[str | Path] = ()) -> None:
    """Refuse a non-empty out_dir (or a file in its place) unless `overwrite`, and an out_dir that is an input.

    `sources` are the command's inputs: writing onto one of them (or onto a directory holding one)
    would destroy it before it is read in full, overwrite or not.
    """
    target = output_target(out_dir)
    refuse_source_as_output(target, sources, out_dir)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"output {out_dir} is a file, not a directory")
    if is_non_empty_dir(target) and not overwrite:
        raise FileExistsError(f"output directory {out_dir} is not empty; pass {flag} to replace it")


def refuse_source_as_output(target: Path, sources: Iterable[str | Path], shown: str | Path | None = None) -> None:
    resolved = Path(target).resolve()
    for source in sources:
        if source is None or not looks_like_path(source) and not Path(source).exists():
            continue
        source_path = Path(source).expanduser().resolve()
        if source_path == resolved or resolved in source_path.parents:
            raise ValueError(f"output {shown or target} is the input {source}{' (or holds it)' if source_path != resolved else ''}; "
                             "writing there would destroy it: choose another output")


def replace_directory(staging: Path, target: Path) -> None:
    """Move a finished staging dir to target; an existing target is replaced as a whole (never merged)."""
    if target.exists():
        old = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)  # after this line only the new directory can end up at `target`
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def _disk_full_errno(error: BaseException) -> int | None:
    """The errno of a full-disk failure: an OSError's, or the 'os error N' inside a SafetensorError (not an OSError)."""
    if isinstance(error, OSError) and not isinstance(error, WriteFailedError):
        return error.errno if error.errno in DISK_FULL_ERRNOS else None
    if type(error).__name__ == "SafetensorError":
        found = re.search(r"os error (\d+)", str(error))
        if found and int(found.group(1)) in DISK_FULL_ERRNOS:
            return int(found.group(1))
    return None


@contextlib.contextmanager
def write_errors_as_one_line(target: Path, staging: Path | None = None) -> Iterator[None]:
    """A failed write removes the staging dir; a full disk becomes one WriteFailedError naming target."""
    try:
        yield
    except BaseException as error:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        code = _disk_full_errno(error)
        if code is not None:
            where = f" ({error.filename})" if getattr(error, "filename", None) else ""
            raise WriteFailedError(
                f"writing {target} failed: {os.strerror(code)}{where}; "
                "nothing that existed before was changed and the partial copy was removed"
            ) from None
        if type(error).__name__ == "SafetensorError":
            raise WriteFailedError(f"writing {target} failed: {str(error).splitlines()[0]}; the partial copy was removed") from None
        raise


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _owner_tag() -> str:
    return f"{socket.gethostname().replace('-', '_')}-{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(target: Path) -> list[Path]:
    """Remove staging dirs beside `target` left by writers on this host that no longer run; undo a half replace.

    A writer killed between the two renames of replace_directory left the old directory at
    `.NAME.replaced` and nothing at NAME: it is put back.
    """
    removed = []
    host = socket.gethostname().replace("-", "_")
    for path in target.parent.glob(f"{_staging_prefix(target)}*"):
        parts = path.name[len(_staging_prefix(target)):].split("-")
        if len(parts) >= 3 and parts[0] == host and parts[1].isdigit() and not _process_alive(int(parts[1])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    replaced = target.with_name(f".{target.name}.replaced")
    if replaced.is_dir():
        if target.exists():
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.replace(replaced, target)
    return removed


def default_dir_mode() -> int:
    """The mode os.makedirs (and so save_pretrained) gives a new directory under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextlib.contextmanager
def atomic_directory(out_dir: str | Path, overwrite: bool = False, flag: str = "--overwrite",
                     sources: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a staging dir beside `out_dir`; on success it replaces `out_dir` in one rename.

    A non-empty out_dir is refused unless `overwrite` (`flag` names the option in the message), so is an
    out_dir that is one of `sources`. A symlinked out_dir is written into its target (the link stays).
    On any error the staging dir is removed and out_dir is left as it was.
    """
    target = output_target(out_dir)
    refuse_existing(out_dir, overwrite, flag, sources)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(target)}{_owner_tag()}", dir=target.parent))
    os.chmod(staging, default_dir_mode())  # mkdtemp's 0700 would become the model directory's mode
    with write_errors_as_one_line(Path(out_dir), staging):
        yield staging
        replace_directory(staging, target)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file through a sibling temp file and a rename (never half a file)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    with write_errors_as_one_line(path):
        try:
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- run directories
@contextlib.contextmanager
def claim_run_directory(directory: str | Path, enabled: bool = True) -> Iterator[Path]:
    """Hold an exclusive claim (flock on RUN_LOCK) of a training run's output directory while the block runs.

    A second run into the same directory fails at once, naming the holder. The kernel drops the lock
    when its process dies (even on kill -9), so a crashed run never blocks the next. `enabled=False`
    (ranks other than the main one) yields without claiming. A directory created here that stays empty
    is removed again, so a refused run leaves nothing behind.
    """
    directory = Path(directory)
    if not enabled:
        yield directory
        return
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RUN_LOCK
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(handle, 200).decode("utf-8", "replace").strip() or "unknown process"
            os.close(handle)
            raise RunDirectoryInUseError(
                f"output directory {directory} is in use by another run ({holder}); wait for it to end or use another output directory"
            ) from None
        if path.exists() and os.stat(path).st_ino == os.fstat(handle).st_ino:
            break
        os.close(handle)  # the holder removed the file between our open and our lock: claim the new one
    os.ftruncate(handle, 0)
    os.write(handle, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    try:
        yield directory
    finally:
        path.unlink(missing_ok=True)
        os.close(handle)
        if created and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def is_main_launch_rank() -> bool:
    """Before any process group exists: is this the launcher's global rank 0 (torchrun / deepspeed set RANK)?"""
    return int(os.environ.get("RANK", "0")) == 0


def require_model_type(name_or_path: str | Path, expected: Any, what: str, expected_text: str | None = None):
    """The checkpoint's config, after checking its model_type is in `expected` (one line naming both)."""
    from transformers import AutoConfig

    check_model_files(name_or_path, what)
    try:
        config = AutoConfig.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{what} {name_or_path}: cannot read a model config ({str(error).splitlines()[0]})") from None
    if config.model_type not in expected:
        wanted = expected_text or " or ".join(repr(t) for t in sorted(expected))
        raise ValueError(f"{what} {name_or_path} is a '{config.model_type}' checkpoint; expected {wanted}")
    return config
