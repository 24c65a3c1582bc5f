"""The speed options (pretrain/speed.py): which linears FP8 takes, the one-line refusals, compile modes, attention.

Speed itself is measured in bench/, never here. The FP8 filter is checked against torchao's published H100
rule written out below per weight shape, on real-size towers built on the meta device (nothing allocated).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipModel

from pretrain_helpers import checkpoint_tensors, make_workspace, recipe, single_thread, stage_args
from reasonclip_llava.encoder.modeling import ReasonCLIPForPretraining
from reasonclip_llava.pretrain import speed
from reasonclip_llava.pretrain.config import load_config
from reasonclip_llava.pretrain.trainer import main, pretrain

VISION_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def meta_clip(vision: dict, text: dict, projection_dim: int) -> CLIPModel:
    with torch.device("meta"):
        return CLIPModel(CLIPConfig(vision_config=vision, text_config=dict(text, vocab_size=49408), projection_dim=projection_dim))


def vit_l14_336() -> CLIPModel:  # openai/clip-vit-large-patch14-336
    return meta_clip(dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14),
                     dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12), 768)


def so400m_14_384() -> SiglipModel:  # google/siglip-so400m-patch14-384
    tower = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
    with torch.device("meta"):
        return SiglipModel(SiglipConfig(vision_config=dict(tower, image_size=384, patch_size=14),
                                        text_config=dict(tower, vocab_size=32000, max_position_embeddings=64)))


def layer_linears(layers: int, names: tuple[str, ...]) -> list[str]:
    return sorted(f"vision_model.encoder.layers.{i}.{name}" for i in range(layers) for name in names)


# torchao's H100 rule (its auto filter, from its float8 roofline tables), weight N = out x K = in:
#   tensorwise pays unless K <= 4096 and N <= 1024; rowwise only when N > 2048, K > 1024 and not (N <= 4096 and K <= 2048).
# ViT-L/14 (1024 wide, MLP 4096): q/k/v/o 1024x1024 and fc2 (N 1024, K 4096) stay bf16 under tensorwise; fc1
# (N 4096, K 1024) converts. Rowwise: fc1 has K = 1024, so nothing converts. So400M (1152, MLP 4304): every
# tensorwise shape has N > 1024 or K > 4096; rowwise keeps only fc1 (N 4304, K 1152). Never the text tower,
# the projections or SigLIP's pooling head.
@pytest.mark.parametrize("build, recipe_name, expected", [
    (vit_l14_336, "tensorwise", layer_linears(24, ("mlp.fc1",))),
    (vit_l14_336, "rowwise", []),
    (so400m_14_384, "tensorwise", layer_linears(27, VISION_LINEARS)),
    (so400m_14_384, "rowwise", layer_linears(27, ("mlp.fc1",))),
])
def test_fp8_converts_exactly_the_image_layers_that_pay_at_real_size(build, recipe_name, expected):
    from torchao.float8.float8_linear import Float8Linear

    model = build()
    keys = list(model.state_dict())
    converted = speed.convert_to_fp8(model, recipe_name)
    assert sorted(converted) == expected
    swapped = sorted(name for name, module in model.named_modules() if isinstance(module, Float8Linear))
    assert swapped == expected
    assert list(model.state_dict()) == keys  # same names: checkpoints and exports stay plain CLIP / SigLIP weights


def test_fp8_skips_dims_not_divisible_by_16():
    # 1040 = 16 x 65 converts (tensorwise: N 1040 > 1024); an MLP of 4100 (= 16 x 256.25) cannot feed torch._scaled_mm.
    model = meta_clip(dict(hidden_size=1040, intermediate_size=4100, num_hidden_layers=2, num_attention_heads=65, image_size=32, patch_size=16),
                      dict(hidden_size=1040, intermediate_size=4160, num_hidden_layers=2, num_attention_heads=65), 1040)
    converted = speed.convert_to_fp8(model, "tensorwise")
    assert sorted(converted) == layer_linears(2, VISION_LINEARS[:4])  # the attention projections only; no text-tower layer


def test_fp8_refuses_the_cpu_with_one_line_and_writes_nothing(tmp_path, capsys):
    ws = make_workspace(tmp_path / "ws")
    out = tmp_path / "run"
    capsys.readouterr()
    with single_thread():
        code = main([str(recipe("stage1")), *stage_args(ws, "stage1", out, "--runtime.fp8=tensorwise", "--schedule.max_steps=1")])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (transformers' loading bars aside)
    assert code == 2
    assert err == ["pretrain: error: config key 'runtime.fp8=tensorwise' needs a CUDA GPU of compute capability >= 8.9 "
                   "(Ada, Hopper or newer): cpu has no float8 GEMM"]
    assert not out.exists()


def test_fp8_names_a_pre_hopper_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert speed.fp8_unsupported_reason(torch.device("cuda", 0)) == "NVIDIA A100-SXM4-80GB is compute capability 8.0"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert speed.fp8_unsupported_reason(torch.device("cuda", 0)) is None


# ----------------------------------------------------------------------------------------- config values
def test_speed_keys_read_old_booleans_and_fail_with_one_line(tmp_path):
    base = [f"--model.name_or_path={tmp_path}", f"--data.train={tmp_path}", f"--runtime.output_dir={tmp_path}"]
    assert load_config(None, [*base, "--model.torch_compile=true"]).model.torch_compile == "regional"
    assert load_config(None, [*base, "--model.torch_compile=false"]).model.torch_compile == "none"
    assert load_config(None, [*base, "--model.torch_compile=none"]).model.torch_compile == "none"
    assert load_config(None, [*base, "--model.torch_compile=step"]).model.torch_compile == "step"
    yaml_recipe = tmp_path / "old.yaml"
    yaml_recipe.write_text("model:\n  torch_compile: true\n")  # a YAML boolean, as recipes wrote it before the modes
    assert load_config(yaml_recipe, base).model.torch_compile == "regional"
    for key, bad, message in [
        ("model.torch_compile", "fast", r"config key 'model.torch_compile' must be one of \('none', 'regional', 'step'\) \(got 'fast'\)"),
        ("model.attention", "xformers", r"config key 'model.attention' must be one of \('sdpa', 'cudnn', 'flash', 'auto'\)"),
        ("runtime.fp8", "int8", r"config key 'runtime.fp8' must be one of \('none', 'tensorwise', 'rowwise'\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_config(None, [*base, f"--{key}={bad}"])
    ds = tmp_path / "ds.json"
    ds.write_text("{}")
    with pytest.raises(ValueError, match=r"'step' compiles the prepared module, which DeepSpeed's engine does not allow"):
        load_config(None, [*base, "--model.torch_compile=step", f"--runtime.deepspeed={ds}"])


# ----------------------------------------------------------------------------------------- attention backend
def test_attention_backend_on_cpu(caplog):
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    reference = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v  # attention written out
    with caplog.at_level(logging.WARNING, logger=speed.__name__):
        with speed.attention_backend("cudnn", torch.device("cpu")):
            fallback = F.scaled_dot_product_attention(q, k, v)
        with speed.attention_backend("flash", torch.device("cpu")):  # PyTorch's CPU flash kernel first
            assert not torch.backends.cuda.cudnn_sdp_enabled()
            flash = F.scaled_dot_product_attention(q, k, v)
        with speed.attention_backend("auto", torch.device("cpu")):  # CPU: PyTorch's default dispatch
            auto = F.scaled_dot_product_attention(q, k, v)
    notices = [r.getMessage() for r in caplog.records]
    assert notices == ["model.attention=cudnn: cuDNN attention needs a CUDA GPU of compute capability >= 8.0; cpu uses PyTorch's default SDPA kernels"]
    for out in (fallback, flash, auto):
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after the context


# ----------------------------------------------------------------------------------------- step compile
def _losses(run_dir) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "logs" / "pretrain"))
    events.Reload()
    return [event.value for event in events.Scalars("loss")]


@pytest.mark.slow
def test_step_compile_follows_the_eager_loss_trajectory(tmp_path, monkeypatch):
    """model.torch_compile=step through the trainer: 4 steps of stage 1, same losses and weights as eager.

    Tolerance: fp32 on the CPU, rtol 1e-4 (a compiled graph may order reductions differently; the losses are
    O(1)). The graph is captured by dynamo and differentiated by AOTAutograd as in production; the backend is
    aot_eager, because inductor's C++ codegen takes minutes on a 2-core CI machine.
    """
    monkeypatch.setattr(speed, "COMPILE_OPTIONS", {"backend": "aot_eager"})
    ws = make_workspace(tmp_path / "ws")
    runs = {}
    for mode in ("none", "step"):
        torch._dynamo.reset()
        with single_thread():
            final = pretrain(load_config(recipe("stage1"), stage_args(
                ws, "stage1", tmp_path / mode, "--schedule.max_steps=4", "--runtime.log_every=1", "--runtime.report_to=tensorboard",
                f"--model.torch_compile={mode}", "--model.attention=cudnn")))  # cudnn: falls back on the CPU, still trains
        runs[mode] = (_losses(tmp_path / mode), checkpoint_tensors(final))
    (eager_losses, eager_weights), (step_losses, step_weights) = runs["none"], runs["step"]
    assert len(eager_losses) == 4 and eager_losses[-1] != eager_losses[0]
    torch.testing.assert_close(step_losses, eager_losses, rtol=1e-4, atol=0)
    assert step_weights.keys() == eager_weights.keys()  # compiled in place: checkpoints keep their names
    for name, tensor in eager_weights.items():
        torch.testing.assert_close(step_weights[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    assert speed.graph_break_report()["graphs"] >= 1


@pytest.mark.slow
def test_step_compile_has_no_graph_break_on_the_contrastive_path(tmp_path):
    """The stage-0 objective (image + text towers + CLIP loss) is one graph with its backward, as dynamo sees it."""
    from transformers import CLIPModel as PlainCLIP

    from reasonclip_llava.pretrain.config import StageConfig
    from reasonclip_llava.pretrain.objective import StageObjective
    from reasonclip_llava.testing.tiny import tiny_clip_config

    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    objective = StageObjective(ReasonCLIPForPretraining(PlainCLIP(tiny_clip_config())), StageConfig(name="stage0"), 10, math.log(50))
    speed.compile_step(objective, backend="aot_eager")
    ids = torch.tensor([[49406, 320, 1125, 49407], [49406, 320, 49407, 49407]])
    batch = {"pixel_values": torch.randn(2, 3, 32, 32), "desc_input_ids": ids}
    for step in range(3):  # the step number changes: no recompiles on the contrastive path (it does not read it)
        loss, _ = objective(batch, step)
        loss.backward()
    report = speed.graph_break_report()
    assert report["graph_breaks"] == 0, report["reasons"]
    assert report["graphs"] == 1
    assert all(p.grad is not None for p in objective.encoder.backbone.vision_model.parameters() if p.requires_grad)


def test_fp8_checkpoints_export_and_verify_as_plain_clip(tmp_path):
    """Float8Linear keeps the fp32 master weight under the same name: the export is a plain CLIP that verify accepts."""
    from reasonclip_llava.encoder.export import export_encoder
    from reasonclip_llava.encoder.verify import verify_export

    torch.manual_seed(0)
    config = CLIPConfig(  # one image layer wide enough for float8 (1040 = 16 x 65 > 1024), a tiny text tower
        vision_config=dict(hidden_size=1040, intermediate_size=4160, num_hidden_layers=2, num_attention_heads=65,
                           image_size=32, patch_size=16),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=49408),
        projection_dim=32)
    base = tmp_path / "base"
    CLIPModel(config).save_pretrained(base)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(base)  # the tower's
    encoder = ReasonCLIPForPretraining.from_pretrained(base)
    converted = speed.convert_to_fp8(encoder.backbone, "tensorwise")
    assert sorted(converted) == layer_linears(2, VISION_LINEARS)
    encoder.save_pretrained(tmp_path / "ckpt", source=base)
    report = verify_export(export_encoder(tmp_path / "ckpt", tmp_path / "export"), base)
    assert report["ok"], report["failed"]


# ----------------------------------------------------------------------------------------- MFU (bench/)
def test_dense_bf16_peaks_by_device_name_and_mfu():
    # torch.cuda.get_device_name() strings; the peaks are NVIDIA's dense (no sparsity) bf16 data-sheet figures.
    names = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0, "NVIDIA H100 NVL": 835.0, "NVIDIA H200": 989.0,
             "NVIDIA GH200 480GB": 989.0, "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100 80GB PCIe": 312.0, "NVIDIA L40S": 362.0,
             "NVIDIA L4": 121.0, "cpu": None}
    assert {name: speed.peak_bf16_tflops(name) for name in names} == names
    # issue 14's reading of the H100 row: ~76 TFLOP per step at 209 ms is about 37% of 989 TFLOP/s
    assert speed.mfu(76e12, 0.209, 989.0) == pytest.approx(0.3677, abs=1e-3)
    assert speed.mfu(76e12, 0.209, None) is None


def test_training_step_flops_count_forward_and_backward_on_meta():
    """Two linears: each GEMM is 2*B*K*N; backward adds weight gradients for both and an input gradient for the
    second only (the data needs none), so the step is 2B * (2 * 256*512 + 3 * 512*128)."""

    class TwoLinears(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = nn.Linear(256, 512, bias=False), nn.Linear(512, 128, bias=False)

        def forward(self, batch, step):
            return self.second(self.first(batch["x"])).square().mean(), {}

    with torch.device("meta"):
        objective = TwoLinears()
    assert speed.training_step_flops(objective, {"x": torch.zeros(32, 256, device="meta")}) == 2 * 32 * (2 * 256 * 512 + 3 * 512 * 128)
