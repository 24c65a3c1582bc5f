"""Shared fixtures. Every test runs offline: tiny random models are built locally and reloaded."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def clip_tokenizer():
    from reasonclip_llava.assets import clip_tokenizer as build

    return build()


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random tiny CLIPModel checkpoint (real CLIP BPE tokenizer, CLIP image processor)."""
    from reasonclip_llava.testing.tiny import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory):
    """A random tiny SiglipModel checkpoint (no CLS token)."""
    from reasonclip_llava.testing.tiny import save_tiny_siglip

    return save_tiny_siglip(tmp_path_factory.mktemp("tiny_siglip"))
