"""Reading and writing checkpoints safely: nothing lost, nothing silently wrong.

Writing: every command that writes a model directory goes through `atomic_directory`: a non-empty target
is refused unless the caller asks to overwrite; the files go to a sibling temp dir that is renamed into
place at the end, so a crash (or a full disk) never leaves half a checkpoint, and an overwrite never
leaves stale files of the old one beside the new.

Reading: `check_model_files` / `check_safetensors` / `check_torch_archive` look at weight files before
anything loads them, so a truncated file, a pickle where safetensors is expected (never unpickled) or a
missing path fails with one line naming the file; `load_pretrained_strict` refuses weights that do not
match the architecture instead of leaving them randomly initialised.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

# errno values that mean "the disk (or quota) is full", turned into one line instead of a traceback.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# What torch.save writes (a zip archive) and what a bare pickle starts with (the PROTO opcode).
ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class UnreadableFileError(ValueError):
    """A weight / state file that cannot be read as what it should be (the message names the file)."""


class WriteFailedError(OSError):
    """Writing a directory failed (e.g. the disk is full); nothing that existed before was touched."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- reading
def looks_like_path(name: str | Path) -> bool:
    """True for strings a user means as a local path (absolute, ./, ../, ~, or more than one '/')."""
    text = str(name)
    return isinstance(name, Path) or text.startswith(("/", "./", "../", "~", ".\\")) or text.count("/") > 1 or os.sep in text.replace("/", "")


def require_existing(name_or_path: str | Path, what: str) -> None:
    """A local path that does not exist is named as such (transformers would call it a bad Hub repo id)."""
    if looks_like_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(f"{what} {name_or_path}: path does not exist")


def check_safetensors(path: str | Path) -> None:
    """Raise UnreadableFileError (one line, naming the file) unless `path` is a complete safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    head = _head(path)
    if not head:
        raise UnreadableFileError(f"{path}: empty file, expected safetensors weights")
    if head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise UnreadableFileError(f"{path}: a pickle (torch.save) file where safetensors is expected; it is not unpickled")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as error:  # SafetensorError: truncated, bad header, not safetensors at all
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableFileError(f"{path}: not a complete safetensors file (truncated or corrupt: {reason})") from None


def check_torch_archive(path: str | Path) -> None:
    """Raise UnreadableFileError unless `path` is a complete torch.save archive (zip central directory present).

    Cheap (reads the archive's index, not its tensors): enough to catch a file cut off mid-write.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise UnreadableFileError(f"{path}: truncated or not a torch.save archive ({error})") from None


def check_state_dir(directory: str | Path) -> None:
    """Check every weight / state file of a training checkpoint dir (recursively) before it is loaded."""
    for path in sorted(Path(directory).rglob("*")):
        if path.suffix == ".safetensors":
            check_safetensors(path)
        elif path.suffix in PICKLE_SUFFIXES and not _head(path).startswith(PICKLE_MAGIC):
            check_torch_archive(path)  # torch.save's zip (or an empty / cut-off file)


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
    pickles = [p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES and p.name.startswith(("pytorch_model", "model"))]
    if not weights and pickles:
        raise UnreadableFileError(
            f"{pickles[0]}: {what} {directory} has only pickle weights; convert them to safetensors (pickle files are never unpickled)"
        )


def load_pretrained_strict(model_class: Any, name_or_path: str | Path, what: str, allow_unexpected: bool = False,
                           tolerated: Any = None, **kwargs: Any):
    """model_class.from_pretrained, refusing missing / mismatched (and, unless allowed, unexpected) weights.

    `tolerated(unexpected_keys)` names unexpected keys that are no error (a released checkpoint's training heads).

    transformers only logs such keys and initialises the missing ones randomly; here they are an error
    naming the first few, so a wrong checkpoint can never pass as a trained model.
    """
    from transformers.utils import logging as hf_logging

    check_model_files(name_or_path, what)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the report is ours, in one line
    try:
        model, info = model_class.from_pretrained(str(name_or_path), output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    if tolerated is not None and info.get("unexpected_keys"):
        skip = set(tolerated(info["unexpected_keys"]))
        info = {**info, "unexpected_keys": [k for k in info["unexpected_keys"] if k not in skip]}
    kinds = ("missing_keys", "mismatched_keys") if allow_unexpected else ("missing_keys", "unexpected_keys", "mismatched_keys")
    problems = {kind: info[kind] for kind in kinds if info.get(kind)}
    if problems:
        raise ValueError(f"{what} {name_or_path}: weights do not match {model_class.__name__}: {short_key_report(problems)}")
    return model


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


def _head(path: Path, size: int = 8) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError as error:
        raise UnreadableFileError(f"{path}: cannot be read ({error.strerror or error})") from None


# --------------------------------------------------------------------------- writing
def is_non_empty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def refuse_existing(out_dir: str | Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse a non-empty out_dir (or a file in its place) unless `overwrite`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output {out_dir} is a file, not a directory")
    if is_non_empty_dir(out_dir) and not overwrite:
        raise FileExistsError(f"output directory {out_dir} is not empty; pass {flag} to replace it")


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


@contextlib.contextmanager
def write_errors_as_one_line(target: Path, staging: Path | None = None) -> Iterator[None]:
    """A failed write removes the staging dir; a full disk becomes one WriteFailedError naming target."""
    try:
        yield
    except BaseException as error:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, WriteFailedError) and error.errno in DISK_FULL_ERRNOS:
            where = f" ({error.filename})" if error.filename else ""
            raise WriteFailedError(
                f"writing {target} failed: {error.strerror or os.strerror(error.errno)}{where}; "
                "nothing that existed before was changed and the partial copy was removed"
            ) from None
        raise


@contextlib.contextmanager
def atomic_directory(out_dir: str | Path, overwrite: bool = False, flag: str = "--overwrite") -> Iterator[Path]:
    """Yield a temp dir beside `out_dir`; on success it replaces `out_dir` in one rename.

    A non-empty out_dir is refused unless `overwrite` (`flag` names the option in the message). On any
    error the temp dir is removed and out_dir is left as it was.
    """
    out_dir = Path(out_dir)
    refuse_existing(out_dir, overwrite, flag)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    with write_errors_as_one_line(out_dir, staging):
        yield staging
        replace_directory(staging, out_dir)


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
