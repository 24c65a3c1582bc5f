"""Speed options of the pretraining trainer, each a config key, all applied here (trainer.py makes three calls).

    model.torch_compile  none | regional | step   (true = regional, false = none, as before)
        regional: torch.compile each layer of every stack of identical layers, in place (compile time of one
                  block; names, state_dict keys and checkpoints unchanged). The frozen T5 decoder's too.
        step:     torch.compile the whole prepared objective in place: image + text towers + every loss term
                  as one forward graph, whose backward AOTAutograd compiles with it (`accelerator.backward`
                  runs that compiled backward). The boundary, and why: the optimizer stays PyTorch's fused
                  AdamW, already one multi-tensor kernel that moves the 28 bytes/parameter of AdamW at memory
                  speed, so compiling it gains nothing and would need tensor learning rates (a change to the
                  scheduler, logs and optimizer checkpoints); accelerate's loss scaling, gradient clipping,
                  zero_grad, the LR step and the logit-scale clamp stay eager (bookkeeping, microseconds).
                  Under DDP the compiled module is the DDP wrapper, so dynamo's DDPOptimizer splits the graph at
                  gradient-bucket boundaries (breaks on purpose, for communication overlap; not measured here);
                  not with DeepSpeed, whose engine owns forward and backward.
    runtime.fp8          none | tensorwise | rowwise
        torchao's float8 training (`convert_to_float8_training`, recipe by name) on the image tower's layer
        linears whose shape pays (see `fp8_module_filter`); needs CUDA compute capability >= 8.9 and
        torchao (`pip install 'reasonclip-llava[fp8]'`). The weights stay the fp32 master weights under the
        same names, so checkpoints and exports are plain CLIP/SigLIP weights. Meant with torch_compile: eager
        float8 casts are separate kernels.
    model.attention      sdpa | cudnn | flash | auto
        the scaled-dot-product-attention backend (torch.nn.attention.sdpa_kernel, first choice, PyTorch's other
        kernels behind it for inputs it cannot take); auto: cuDNN on Hopper and newer, FlashAttention on
        Ampere/Ada, PyTorch's default elsewhere. A backend the device lacks falls back with a one-line notice.

Also here, for bench/: graph-break counts of what dynamo compiled, dense bf16 peaks by device name and MFU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

COMPILE_MODES = ("none", "regional", "step")
FP8_RECIPES = ("none", "tensorwise", "rowwise")
ATTENTION_BACKENDS = ("sdpa", "cudnn", "flash", "auto")
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)  # float8 tensor cores: Ada (8.9), Hopper (9.0) and newer
FP8_DIM_MULTIPLE = 16  # torch._scaled_mm needs both GEMM dims divisible by 16

# Options of torch.compile for every mode (tests set {"backend": "aot_eager"} to skip inductor's codegen).
COMPILE_OPTIONS: dict[str, Any] = {}


# --------------------------------------------------------------------------- config values
def compile_mode(value: bool | str) -> str:
    """model.torch_compile as a mode: the booleans of older recipes map to none / regional."""
    if isinstance(value, bool):
        return "regional" if value else "none"
    text = str(value).strip().lower()
    return {"true": "regional", "yes": "regional", "on": "regional", "1": "regional",
            "false": "none", "no": "none", "off": "none", "0": "none", "": "none"}.get(text, text)


def check_speed_options(config) -> None:  # noqa: ANN001 - PretrainConfig (imported lazily by config.py's validate)
    """One-line errors naming the key, for what a type alone cannot check (called by PretrainConfig.validate)."""
    mode = compile_mode(config.model.torch_compile)
    if mode not in COMPILE_MODES:
        raise ValueError(f"config key 'model.torch_compile' must be one of {COMPILE_MODES} (got {config.model.torch_compile!r})")
    config.model.torch_compile = mode
    if config.model.attention not in ATTENTION_BACKENDS:
        raise ValueError(f"config key 'model.attention' must be one of {ATTENTION_BACKENDS} (got {config.model.attention!r})")
    if config.runtime.fp8 not in FP8_RECIPES:
        raise ValueError(f"config key 'runtime.fp8' must be one of {FP8_RECIPES} (got {config.runtime.fp8!r})")
    if mode == "step" and config.runtime.deepspeed:
        raise ValueError("config key 'model.torch_compile': 'step' compiles the prepared module, which DeepSpeed's engine "
                         "does not allow (it owns forward and backward); use 'regional' with runtime.deepspeed")


def run_device() -> torch.device:
    """The device the trainer will run on (accelerate's choice for this process), known before accelerate starts."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------- FP8 (torchao float8 training)
def fp8_unsupported_reason(device: torch.device) -> str | None:
    """Why `device` cannot run float8 GEMMs, or None when it can."""
    if device.type != "cuda":
        return f"{device.type} has no float8 GEMM"
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_COMPUTE_CAPABILITY:
        return f"{torch.cuda.get_device_name(device)} is compute capability {capability[0]}.{capability[1]}"
    return None


def repeated_layer_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """(name, stack) for each nn.ModuleList of >= 2 layers of one class: a transformer's blocks."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(layer) for layer in module}) == 1]


def fp8_pays(recipe: str, out_features: int, in_features: int) -> bool:
    """Whether a float8 GEMM of this weight shape (N = out, K = in) beats bf16 on an H100, per torchao's own
    microbenchmarks (the thresholds of torchao 0.18's auto filter): the dynamic-scaling casts (an amax and a
    cast per operand, forward and backward) cost more than the faster GEMM saves below them."""
    n, k = out_features, in_features
    if n % FP8_DIM_MULTIPLE or k % FP8_DIM_MULTIPLE:
        return False
    if recipe == "tensorwise":
        return not (k <= 4096 and n <= 1024)
    # rowwise: scales per row, so it needs larger GEMMs still
    return n > 2048 and k > 1024 and not (n <= 4096 and k <= 2048)


def fp8_module_filter(model: nn.Module, recipe: str) -> Callable[[nn.Module, str], bool]:
    """torchao's `module_filter_fn` (module, fully qualified name) -> convert? for a CLIP/SigLIP backbone.

    Converts a linear only when it sits inside a repeated layer of the image tower and `fp8_pays` for its
    shape. So the projections into the joint space, SigLIP's pooling head, READ's recon projector and the
    category heads stay bf16 (small, and the loss reads them directly), and so does the text tower: its GEMMs
    have batch x 16-77 caption tokens as M, 8-35x fewer rows than the image tower's 577-729 patches, where the
    casts do not pay.
    """
    prefixes = tuple(f"{name}." for name, _ in repeated_layer_stacks(model) if "vision_model." in f"{name}.")

    def keep_fp8(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and fqn.startswith(prefixes) and fp8_pays(recipe, module.out_features, module.in_features)

    return keep_fp8


def convert_to_fp8(model: nn.Module, recipe: str) -> list[str]:
    """Swap the linears `fp8_module_filter` picks for torchao Float8Linear, in place; returns their names.

    The device is not checked here (conversion itself runs anywhere, the meta device included); the trainer
    checks it first (`apply_speed_options`).
    """
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise ValueError(f"config key 'runtime.fp8={recipe}' needs torchao: pip install 'reasonclip-llava[fp8]'") from None
    keep = fp8_module_filter(model, recipe)
    converted: list[str] = []

    def record(module: nn.Module, fqn: str) -> bool:
        if keep(module, fqn):
            converted.append(fqn)
            return True
        return False

    convert_to_float8_training(model, module_filter_fn=record, config=Float8LinearConfig.from_recipe_name(recipe))
    return converted


# --------------------------------------------------------------------------- torch.compile
def compile_repeated_layers(model: nn.Module, **compile_kwargs: Any) -> int:
    """torch.compile, in place, every layer of each stack of identical layers (a transformer's blocks).

    Regional compilation: one compiled graph per layer class, reused by every layer (PyTorch inlines
    module attributes as inputs), so compile time is that of one block, and the in-place
    `Module.compile()` keeps parameter names, state_dict keys, DDP/DeepSpeed hooks and checkpoints as
    they are. `compile_kwargs` go to torch.compile. Returns the number of layers compiled.
    """
    compiled = 0
    for _, stack in repeated_layer_stacks(model):
        for layer in stack:
            layer.compile(**compile_kwargs)
            compiled += 1
    return compiled


def compile_step(objective: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """model.torch_compile=step: the prepared objective (forward + loss, and so its backward) compiled in place."""
    objective.compile(**{**COMPILE_OPTIONS, **compile_kwargs})
    return objective


def graph_break_report() -> dict[str, Any]:
    """What dynamo compiled so far in this process: graph breaks (count, reasons) and distinct graphs.

    Counts accumulate until `torch._dynamo.reset()` / `counters.clear()`; bench/ clears them between rows.
    """
    from torch._dynamo.utils import counters

    reasons = {reason.strip().splitlines()[0]: n for reason, n in counters["graph_break"].items()}
    return {"graph_breaks": sum(reasons.values()), "graphs": int(counters["stats"]["unique_graphs"]), "reasons": reasons}


# --------------------------------------------------------------------------- attention backend
def _attention_order(choice: str, device: torch.device) -> tuple[list, str | None]:
    """The SDPA backends to try in order ([] = PyTorch's default dispatch) and a notice when `choice` falls back."""
    from torch.nn.attention import SDPBackend

    rest = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    cuda = device.type == "cuda"
    capability = torch.cuda.get_device_capability(device) if cuda else (0, 0)
    if choice == "auto":
        choice = "cudnn" if capability >= (9, 0) else "flash" if capability >= (8, 0) else "sdpa"
    if choice == "sdpa":
        return [], None
    if choice == "cudnn":
        if cuda and torch.backends.cudnn.is_available() and capability >= (8, 0):
            return [SDPBackend.CUDNN_ATTENTION, *rest], None
        return [], f"model.attention=cudnn: cuDNN attention needs a CUDA GPU of compute capability >= 8.0; {device} uses PyTorch's default SDPA kernels"
    # flash: CUDA FlashAttention-2 (sm80+) or PyTorch's CPU flash kernel
    if (cuda and torch.backends.cuda.is_flash_attention_available() and capability >= (8, 0)) or device.type == "cpu":
        return rest, None
    return [], f"model.attention=flash: no FlashAttention kernel for {device}; using PyTorch's default SDPA kernels"


@contextlib.contextmanager
def attention_backend(choice: str, device: torch.device) -> Iterator[None]:
    """Context in which every scaled_dot_product_attention (forward, and so its backward) uses `choice`."""
    from torch.nn.attention import sdpa_kernel

    order, notice = _attention_order(choice, device)
    if notice:
        logger.warning(notice)
    if not order:
        yield
        return
    with sdpa_kernel(order, set_priority=True):
        yield


# --------------------------------------------------------------------------- what the trainer calls
def check_device_options(config, device: torch.device) -> None:  # noqa: ANN001
    """Refuse the speed options `device` cannot run (runtime.fp8 off an FP8 GPU); the run and its dry run both ask."""
    if config.runtime.fp8 != "none":
        reason = fp8_unsupported_reason(device)
        if reason is not None:
            raise ValueError(f"config key 'runtime.fp8={config.runtime.fp8}' needs a CUDA GPU of compute capability >= 8.9 "
                             f"(Ada, Hopper or newer): {reason}")


def apply_speed_options(config, encoder: nn.Module, t5: nn.Module | None, device: torch.device) -> list[str]:  # noqa: ANN001
    """Before accelerate.prepare: FP8 linears, then regional compilation. Returns the linears made float8."""
    converted: list[str] = []
    check_device_options(config, device)
    if config.runtime.fp8 != "none":
        # Only the CLIP/SigLIP towers: READ's frozen T5 decoder runs on ~24 target tokens, launch-bound,
        # where float8's extra cast kernels cost more than its GEMMs save (its LM head would stay bf16 anyway).
        converted = convert_to_fp8(encoder.backbone, config.runtime.fp8)
        if not converted:
            logger.warning(f"runtime.fp8={config.runtime.fp8}: no linear of this model is large enough for float8 to pay "
                           "(torchao's H100 thresholds); it trains in bf16")
    if compile_mode(config.model.torch_compile) == "regional":
        compile_repeated_layers(encoder.backbone, **COMPILE_OPTIONS)
        if t5 is not None:
            compile_repeated_layers(t5.decoder, **COMPILE_OPTIONS)
    return converted


# --------------------------------------------------------------------------- MFU (bench/)
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets; first match of the
# substring in torch.cuda.get_device_name() wins, so the specific names come first. FP8 rows are divided by
# the same bf16 figure, so every row's MFU reads on one scale.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (the "H100 80GB HBM3" name)
    ("H800", 989.0),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its torch.cuda.get_device_name(), or None when unknown (CPUs included)."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def mfu(flops_per_step: float, seconds_per_step: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None without a peak)."""
    if not peak_tflops or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / (peak_tflops * 1e12)


def training_step_flops(objective: nn.Module, batch: dict[str, torch.Tensor], step: int = 0) -> int:
    """FLOPs of one training step's forward + backward (the optimizer's elementwise update is not counted).

    Build `objective` and `batch` on the meta device: FlopCounterMode counts every matmul and attention of
    the image and text towers, the loss terms and the frozen T5 without computing anything.
    """
    from ..encoder.flops import count_flops

    def forward_backward() -> None:
        loss, _ = objective(batch, step)
        loss.backward()

    return count_flops(forward_backward)
