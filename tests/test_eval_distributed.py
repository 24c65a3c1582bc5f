"""`eval vqa` data-parallel: 2 CPU processes (gloo) give the answers file of 1 process, item for item.

The launchers are the real ones (`torchrun --nproc-per-node 2`, `accelerate launch --num_processes 2 --cpu`)
running `python -m reasonclip_llava.cli eval vqa`. A torchrun run is killed with SIGKILL (every process of
it) while the ranks write their part files; the rerun resumes each rank from its own part file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lmms_lab_fixtures import rows_for, write_lmms_lab
from reasonclip_llava.cli import main

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _command(launcher: list[str], args: list[str]) -> list[str]:
    return [*launcher, "-m", "reasonclip_llava.cli", "eval", "vqa", *args]


def _launch(launcher: list[str], args: list[str], tmp_path: Path) -> None:
    done = subprocess.run(_command(launcher, args), env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _kill_all_when(launcher: list[str], args: list[str], tmp_path: Path, ready, timeout: float = 300) -> None:
    """Start the launcher in its own process group; once ready(), SIGKILL the launcher and every rank at once."""
    process = subprocess.Popen(_command(launcher, args), env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert process.poll() is None, f"the run ended before it was killed: {process.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "no part file grew in time"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_equal_one_item_for_item(tmp_path):
    from reasonclip_llava.testing.tiny_llava import save_tiny_llava_next

    model = save_tiny_llava_next(tmp_path / "tiny_llava")
    base = rows_for("pope")[0]
    extra = [dict(base[k % 6], id=str(6 + k), question_id=str(6 + k), question=f"Is there a {thing} in the image?")
             for k, thing in enumerate(["horse", "boat", "kite", "sheep", "clock", "train", "bench"])]
    rows = base + extra
    data = write_lmms_lab("pope", tmp_path / "data", rows=rows)  # 13 questions: shards of 7 and 6
    common = ["--model", str(model), "--benchmark", "pope", "--data", str(data), "--images", str(tmp_path / "images"),
              "--prompts", "lmms_eval", "--max-new-tokens", "4", "--no-progress"]
    one = tmp_path / "one.jsonl"
    assert main(["eval", "vqa", *common, "--batch-size", "4", "--out", str(one)]) == 0
    header, *answers = _lines(one)
    assert len(answers) == len(rows) and len({a["text"] for a in answers}) > 1

    # kill -9 the whole run while both ranks are part-way (one question a batch, so the parts grow row by row)
    two = tmp_path / "two.jsonl"
    torchrun = ["torchrun", "--nproc-per-node", "2", "--master-port", str(29500 + os.getpid() % 1000)]
    parts = [tmp_path / f"two.jsonl.part-0{rank}-of-02" for rank in (0, 1)]

    def both_part_way() -> bool:
        return all(p.exists() and p.read_text().count("\n") >= 2 for p in parts)  # the header and an answer each

    _kill_all_when(torchrun, [*common, "--batch-size", "1", "--out", str(two)], tmp_path, both_part_way)
    assert not two.exists()
    kept = [json.loads(line) for line in parts[1].read_text().splitlines()[:2]]  # rank 1's header and first answer
    assert kept[1]["question_id"] == answers[1]["question_id"]
    kept[1]["text"] = "KEPT FROM THE KILLED RUN"  # marked: the rerun must skip it, not answer it again
    rest = parts[1].read_text().splitlines(keepends=True)[2:]
    parts[1].write_text("".join(json.dumps(row) + "\n" for row in kept) + "".join(rest))
    _launch(torchrun, [*common, "--batch-size", "2", "--out", str(two)], tmp_path)
    assert _lines(two) == [header, answers[0], dict(answers[1], text=kept[1]["text"]), *answers[2:]]
    assert not list(tmp_path.glob("two.jsonl.part-*"))

    accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate's launcher is not on PATH")
    three = tmp_path / "three.jsonl"
    _launch([accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
             "--dynamo_backend", "no", "--main_process_port", str(29600 + os.getpid() % 1000)],
            [*common, "--batch-size", "3", "--out", str(three)], tmp_path)
    assert three.read_bytes() == one.read_bytes()
