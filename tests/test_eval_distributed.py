"""`eval vqa` data-parallel: 2 CPU processes (gloo) give the answers file of 1 process, item for item.

The launchers are the real ones (`torchrun --nproc-per-node 2`, `accelerate launch --num_processes 2 --cpu`)
running `python -m reasonclip_llava.cli eval vqa`; rank 1 resumes from the part file a kill -9 left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmms_lab_fixtures import rows_for, write_lmms_lab
from reasonclip_llava.cli import main

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _launch(launcher: list[str], args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    done = subprocess.run([*launcher, "-m", "reasonclip_llava.cli", "eval", "vqa", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_equal_one_item_for_item(tmp_path):
    from reasonclip_llava.testing.tiny_llava import save_tiny_llava_next

    model = save_tiny_llava_next(tmp_path / "tiny_llava")
    base = rows_for("pope")[0]
    rows = base + [dict(base[0], id="6", question_id="6", question="Is there a horse in the image?", category="random")]
    data = write_lmms_lab("pope", tmp_path / "data", rows=rows)  # 7 questions: shards of 4 and 3
    common = ["--model", str(model), "--benchmark", "pope", "--data", str(data), "--images", str(tmp_path / "images"),
              "--prompts", "lmms_eval", "--max-new-tokens", "4", "--batch-size", "2", "--no-progress"]
    one = tmp_path / "one.jsonl"
    assert main(["eval", "vqa", *common, "--out", str(one)]) == 0
    header, *answers = _lines(one)
    assert len(answers) == len(rows) and len({a["text"] for a in answers}) > 1

    # rank 1 (questions 1, 3, 5) was killed after one answer and half of the next line
    two = tmp_path / "two.jsonl"
    kept = dict(answers[1], text="KEPT FROM THE KILLED RUN")
    cut = json.dumps(answers[3])
    (tmp_path / "two.jsonl.part-01-of-02").write_text(json.dumps(header) + "\n" + json.dumps(kept) + "\n" + cut[: len(cut) // 2])
    _launch(["torchrun", "--nproc-per-node", "2", "--master-port", str(29500 + os.getpid() % 1000)], [*common, "--out", str(two)],
            tmp_path)
    assert _lines(two) == [header, *answers[:1], kept, *answers[2:]]
    assert not list(tmp_path.glob("two.jsonl.part-*"))

    accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate's launcher is not on PATH")
    three = tmp_path / "three.jsonl"
    _launch([accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
             "--dynamo_backend", "no", "--main_process_port", str(29600 + os.getpid() % 1000)], [*common, "--out", str(three)], tmp_path)
    assert three.read_bytes() == one.read_bytes()
