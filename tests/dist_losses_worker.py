"""Worker for tests/test_losses_distributed.py.

Under torchrun (gloo, CPU) each rank takes its slice of a fixed-seed global batch, runs every
contrastive loss in both gather modes, backpropagates, and saves loss values and gradients to
`<outfile>.rank<R>.pt`. Imported by the test (not launched) it computes the same cases in one
process on the whole batch, the reference.

    python -m torch.distributed.run --nproc_per_node=2 --master_port=PORT tests/dist_losses_worker.py OUT
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from reasonclip_llava.losses import ClipLoss, HardNegativeClipLoss, ParaphraseAlignmentLoss, SigLipLoss

GLOBAL_BATCH = 8
DIM = 6
NUM_NEGATIVES = 2  # hard negatives per caption
MICRO_BATCHES = 2  # gradient-accumulation case
LOGIT_SCALE = 2.3  # log-temperature, below ln 50
LOGIT_BIAS = -1.5


def global_inputs() -> dict[str, torch.Tensor]:
    """The same tensors on every rank: features are [micro, rows, dim], caption-major negatives."""
    g = torch.Generator().manual_seed(1234)

    def features(rows: int) -> torch.Tensor:
        return F.normalize(torch.randn(MICRO_BATCHES, rows, DIM, generator=g, dtype=torch.float64), dim=-1)

    return {
        "image": features(GLOBAL_BATCH),
        "text": features(GLOBAL_BATCH),
        "negative": features(GLOBAL_BATCH * NUM_NEGATIVES),
        "paraphrase": features(GLOBAL_BATCH),
        "anchor": features(GLOBAL_BATCH),
    }


def local_slice(inputs: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    batch = GLOBAL_BATCH // world_size
    out = {}
    for name, tensor in inputs.items():
        rows = batch * (NUM_NEGATIVES if name == "negative" else 1)  # a rank's negatives are contiguous
        out[name] = tensor[:, rank * rows : (rank + 1) * rows].clone()
    return out


def run_cases(rank: int, world_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """{case: {"loss": summed over micro-batches, "grad_<input>": ..., "grad_logit_scale": ...}}."""
    inputs = local_slice(global_inputs(), rank, world_size)
    results = {}
    for with_grad in (False, True):
        cases = {
            "clip": (ClipLoss(gather_with_grad=with_grad), ("image", "text"), 1),
            "siglip": (SigLipLoss(gather_with_grad=with_grad), ("image", "text"), 1),
            "hard_negative": (HardNegativeClipLoss(gather_with_grad=with_grad), ("image", "text", "negative"), 1),
            "hard_negative_accum": (
                HardNegativeClipLoss(gather_with_grad=with_grad),
                ("image", "text", "negative"),
                MICRO_BATCHES,
            ),
            "paraphrase": (ParaphraseAlignmentLoss(gather_with_grad=with_grad), ("paraphrase", "anchor"), 1),
        }
        for case, (loss_fn, names, micro_batches) in cases.items():
            leaves = {name: inputs[name].clone().requires_grad_(True) for name in names}
            logit_scale = torch.tensor(LOGIT_SCALE, dtype=torch.float64, requires_grad=True)
            logit_bias = torch.tensor(LOGIT_BIAS, dtype=torch.float64, requires_grad=True)
            total = torch.zeros((), dtype=torch.float64)
            for micro in range(micro_batches):  # accumulation: one backward per micro-batch
                args = [leaves[name][micro] for name in names]
                if isinstance(loss_fn, SigLipLoss):
                    loss = loss_fn(*args, logit_scale, logit_bias)
                else:
                    loss = loss_fn(*args, logit_scale)
                loss.backward()
                total += loss.detach()
            record = {"loss": total, "grad_logit_scale": logit_scale.grad.clone()}
            if isinstance(loss_fn, SigLipLoss):
                record["grad_logit_bias"] = logit_bias.grad.clone()
            for name, leaf in leaves.items():
                record[f"grad_{name}"] = leaf.grad[:micro_batches].clone()
            results[f"{case}/gather_with_grad={with_grad}"] = record
    return results


def main(outfile: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    results = run_cases(rank, world_size)
    torch.save({"rank": rank, "world_size": world_size, "results": results}, f"{outfile}.rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    # Skip interpreter teardown: on this torch/gloo build it occasionally aborts ("terminate called
    # without an active exception") after all work is done and saved.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) != 2 or "RANK" not in os.environ:
        raise SystemExit("usage: python -m torch.distributed.run --nproc_per_node=N dist_losses_worker.py OUTFILE")
    main(sys.argv[1])
