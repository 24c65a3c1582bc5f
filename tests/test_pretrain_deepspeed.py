"""DeepSpeed ZeRO-2 / ZeRO-3 (CPU, one process under torchrun): same weights as a plain run, checkpoints reload."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from pretrain_helpers import REPO, checkpoint_tensors, make_workspace, recipe, single_thread, stage_args
from reasonclip_llava.encoder.modeling import ReasonCLIPForPretraining
from reasonclip_llava.pretrain.trainer import pretrain_from_yaml
from test_pretrain_distributed import _free_port

COMMON = ("--schedule.max_steps=3", "--runtime.save_every=2", "--optim.lr=1e-4")


def _torchrun(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
         "-m", "reasonclip_llava.pretrain", str(recipe("stage2")), *args],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_deepspeed_zero2_and_zero3_match_a_plain_run(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    with single_thread():
        plain = pretrain_from_yaml(recipe("stage2"), stage_args(ws, "stage2", tmp_path / "plain", *COMMON))
    expected, start = checkpoint_tensors(plain), checkpoint_tensors(ws["clip"])
    moved = max((expected[k] - start[k]).abs().max().item() for k in start)
    for zero in (2, 3):
        out = tmp_path / f"zero{zero}"
        _torchrun(stage_args(ws, "stage2", out, *COMMON, f"--runtime.deepspeed={REPO / 'train' / f'ds_zero{zero}_pretrain.json'}"))
        assert (out / "checkpoint-2" / "trainer_state" / "latest").is_file()  # DeepSpeed's own checkpoint layout
        model = ReasonCLIPForPretraining.from_pretrained(out / "final")  # 0-d logit_scale restored, heads saved whole
        assert model.logit_scale.ndim == 0 and model.category_heads is not None
        got = checkpoint_tensors(out / "final")
        assert got.keys() == expected.keys()
        worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
        assert worst < moved / 20, f"ZeRO-{zero} weights differ by {worst} (updates are {moved})"
    # resume the same run from the ZeRO-2 checkpoint (as after a crash) and finish its last step
    # (another max_steps would change the schedule: a resume refuses that)
    shutil.rmtree(tmp_path / "zero2" / "final")
    _torchrun(stage_args(ws, "stage2", tmp_path / "zero2", *COMMON,
                         f"--runtime.deepspeed={REPO / 'train' / 'ds_zero2_pretrain.json'}", "--runtime.resume_from=latest"))
    assert ReasonCLIPForPretraining.from_pretrained(tmp_path / "zero2" / "final").info.stage == "stage2"
