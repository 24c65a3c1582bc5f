"""By-hand check: LLaVA-NeXT's real `SigLipVisionTower` against `ReasonCLIPVisionTower`, features bitwise.

LLaVA-NeXT's tower (llava/model/multimodal_encoder/siglip_encoder.py) loads a SigLIP checkpoint into its
own SigLIP copy, deletes the last encoder layer and the head, and returns the new last layer's hidden
states (every token). `register_with_llava()` routes local SigLIP exports to `ReasonCLIPVisionTower`
instead; configured as LLaVA-NeXT's SigLIP runs are (`mm_vision_select_layer -2`, 'patch') it must give the
same tensor. LLaVA-NeXT's code needs transformers 4.x, so its tower runs in a subprocess whose sys.path
holds transformers 4.57 and only the three LLaVA-NeXT files it needs (its package `__init__` imports the
whole code base and fails under transformers 5); our tower runs here, under the project's transformers.
Both read the same checkpoint and the same pixels, fp32, one CPU thread each. Not a CI test.

Setup (once):
    pip install --no-deps --target /work/cache/next-tf "transformers==4.57.1" "huggingface_hub>=0.34,<1.0" "tokenizers>=0.22,<0.23"
    LLaVA-NeXT's source: a checkout (--llava-next-src DIR) or a bare git dir (--llava-next-git-dir DIR, read at HEAD)
Run:
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/llava_next_siglip_parity.py --sizes small so400m
Sizes: 'small' (64 wide, 4 layers, 384 px / patch 14: the 729 tokens LLaVA-NeXT's forward asserts) and
'so400m' (google/siglip-so400m-patch14-384's vision shape, random weights; ~2 GB on disk, a minute on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# LLaVA-NeXT files the tower needs: the tower module and what it imports from `llava` (rank0_print).
LLAVA_NEXT_FILES = ("llava/model/multimodal_encoder/siglip_encoder.py", "llava/utils.py", "llava/constants.py")
SIZES = {
    "small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2, image_size=384, patch_size=14),
    "so400m": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384, patch_size=14),
}


def extract_llava_next(dest: Path, src: Path | None, git_dir: Path | None) -> None:
    """The three files under dest/llava/..., with empty package `__init__`s of our own (theirs import everything)."""
    for relative in LLAVA_NEXT_FILES:
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if src is not None:
            target.write_bytes((src / relative).read_bytes())
        else:
            target.write_bytes(subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{relative}"],
                                              check=True, capture_output=True).stdout)
    for package in ("llava", "llava/model", "llava/model/multimodal_encoder"):
        (dest / package / "__init__.py").touch()


def worker(checkpoint: str, pixels: str, out: str) -> None:
    """Subprocess side (transformers 4.x + LLaVA-NeXT's file): its tower's features and a weight check."""
    import transformers
    from llava.model.multimodal_encoder.siglip_encoder import SigLipVisionTower

    torch.set_num_threads(1)
    tower = SigLipVisionTower(checkpoint, vision_tower_cfg=argparse.Namespace(), delay_load=False)
    # Its _init_weights is a no-op, so a weight the load missed would be left uninitialised: compare them all.
    on_disk = {name: tensor for shard in sorted(Path(checkpoint).glob("*.safetensors")) for name, tensor in load_file(shard).items()}
    loaded = tower.vision_tower.state_dict()
    unequal = [name for name, tensor in loaded.items() if name not in on_disk or not torch.equal(tensor, on_disk[name])]
    with torch.no_grad():
        features = tower(load_file(pixels)["pixel_values"])
    save_file({"features": features.contiguous()}, out)
    print(json.dumps({"transformers": transformers.__version__, "layers_kept": len(tower.vision_tower.vision_model.encoder.layers),
                      "head": type(tower.vision_tower.vision_model.head).__name__, "tensors_checked": len(loaded),
                      "tensors_unequal": unequal}))


def run_size(name: str, root: Path, llava_next_root: Path, transformers4: Path, seed: int) -> dict:
    from types import SimpleNamespace

    from reasonclip_llava.encoder import ReasonCLIPVisionTower
    from reasonclip_llava.testing.tiny import save_tiny_siglip

    checkpoint, pixels, out = root / name, root / f"{name}_pixels.safetensors", root / f"{name}_llava_next.safetensors"
    # A dual SiglipModel, as this project's exports and Google's checkpoints are (`vision_model.*` names);
    # the text tower is the tiny one: neither side reads it.
    save_tiny_siglip(checkpoint, seed=seed, **SIZES[name])
    size = SIZES[name]["image_size"]
    save_file({"pixel_values": torch.randn(1, 3, size, size)}, pixels)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(transformers4), str(llava_next_root)]), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(checkpoint), str(pixels), str(out)],
                            env=env, capture_output=True, text=True, cwd=root)
    if result.returncode != 0:
        raise RuntimeError(f"LLaVA-NeXT worker failed:\n{result.stderr[-4000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    theirs = load_file(out)["features"]
    row = dict(size=name, vision_config=SIZES[name], llava_next=report, shape_llava_next=list(theirs.shape))
    ours_tower = ReasonCLIPVisionTower(checkpoint, args=SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch"))
    # transformers' default attention (sdpa) and its eager path: LLaVA-NeXT's copy computes attention as
    # eager does (matmul, fp32 softmax, matmul), so eager is where bitwise equality is expected.
    for attention in ("sdpa", "eager"):
        ours_tower.vision_tower.set_attn_implementation(attention)
        with torch.no_grad():
            ours = ours_tower(load_file(pixels)["pixel_values"])
        same_shape = ours.shape == theirs.shape
        row[f"ours_{attention}"] = dict(shape=list(ours.shape), bitwise=bool(same_shape and torch.equal(ours, theirs)),
                                        max_abs_diff=(ours - theirs).abs().max().item() if same_shape else None)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small"])
    parser.add_argument("--llava-next-src", type=Path, help="a LLaVA-NeXT checkout")
    parser.add_argument("--llava-next-git-dir", type=Path, default=Path("/work/.mirror/LLaVA-VL+LLaVA-NeXT/repo"))
    parser.add_argument("--transformers-4-dir", type=Path, default=Path("/work/cache/next-tf"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory(prefix="llava_next_siglip_") as tmp:
        root = Path(tmp)
        extract_llava_next(root / "src", args.llava_next_src, None if args.llava_next_src else args.llava_next_git_dir)
        for name in args.sizes:
            results.append(run_size(name, root, root / "src", args.transformers_4_dir, args.seed))
            print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
    else:
        main()
