"""Real assets that install offline: the CLIP BPE vocabulary (open-clip-torch wheel) and sample photos.

Nothing here touches the network. The BPE vocabulary is read from the open_clip package *files*
without importing open_clip (its import pulls torchvision, which we do not depend on).
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import json
import sys
import types
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer, PreTrainedTokenizerBase

CLIP_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# open_clip keeps the first 48894 merges (49152 - 256 - 2), giving a 49408-token vocabulary.
_NUM_MERGES = 49152 - 256 - 2


def open_clip_package_dir() -> Path:
    """Folder of the installed open_clip package, found without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "open-clip-torch is not installed; it ships the CLIP BPE vocabulary and open_clip's model configs "
            "(pip install --no-deps open-clip-torch)"
        )
    return Path(list(spec.submodule_search_locations)[0])


OPEN_CLIP_FILES = "_open_clip_wheel"  # the wheel's folder mounted under this package name, its __init__ never run


def open_clip_module(name: str) -> types.ModuleType:
    """One module of the installed open_clip (e.g. "pretrained", "tokenizer", "model"), imported from the wheel's
    files without open_clip/__init__.py (which imports torchvision). Its relative imports resolve in the same folder."""
    if OPEN_CLIP_FILES not in sys.modules:
        package = types.ModuleType(OPEN_CLIP_FILES)
        package.__path__ = [str(open_clip_package_dir())]
        sys.modules[OPEN_CLIP_FILES] = package
    return importlib.import_module(f"{OPEN_CLIP_FILES}.{name}")


def open_clip_bpe_path() -> Path:
    """Path of the CLIP BPE merges file shipped in the open-clip-torch wheel."""
    path = open_clip_package_dir() / CLIP_BPE_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE vocabulary not found at {path}")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-level alphabet: printable bytes map to themselves, the rest to code points >= 256.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_tokenizer_files(out_dir: str | Path) -> Path:
    """Write vocab.json + merges.txt (Hugging Face CLIP layout) built from open_clip's BPE file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return out_dir


def clip_tokenizer(cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The real CLIP tokenizer (49408 tokens, max length 77) built from the offline BPE vocabulary."""
    cache_dir = Path(cache_dir) if cache_dir else _default_cache_dir()
    if not (cache_dir / "vocab.json").is_file():
        write_clip_tokenizer_files(cache_dir)
    return CLIPTokenizer.from_pretrained(str(cache_dir), model_max_length=77)


@lru_cache(maxsize=1)
def _default_cache_dir() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / "reasonclip_clip_bpe"


SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "colorwheel", "hubble_deep_field", "immunohistochemistry", "camera")


def sample_photos(names: tuple[str, ...] = SAMPLE_PHOTOS) -> list:
    """Real RGB photos from scikit-image's bundled data, as PIL images."""
    from PIL import Image
    from skimage import data

    images = []
    for name in names:
        array = getattr(data, name)()
        image = Image.fromarray(array)
        images.append(image.convert("RGB"))
    return images
