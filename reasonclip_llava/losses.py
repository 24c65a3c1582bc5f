"""Every training loss of ReasonCLIP and READ as a small nn.Module, plus one distributed-gather helper.

Conventions shared by the contrastive losses (ClipLoss, SigLipLoss, HardNegativeClipLoss,
ParaphraseAlignmentLoss):

* Features are L2-normalised embeddings [local_batch, D]; the losses do not normalise them.
* `logit_scale` is the model's *log* temperature parameter (`CLIPModel.logit_scale`, ln 100 for
  OpenAI CLIP); the loss clamps it at `logit_scale_max` (ln 50 for ReasonCLIP) and then
  exponentiates. Clamping inside the loss zeroes its gradient while it sits above the bound, so also
  call `clamp_logit_scale_` after loading and after every optimizer step.
* Every rank passes the same local batch size (use drop_last=True): the global batch is the ranks'
  batches concatenated in rank order, and this rank's rows sit at rank * local_batch.

Scaling contract (what makes multi-GPU training identical to one process on the global batch L):

* The per-rank losses average to L (their mean over ranks equals the single-process loss).
* backward() leaves world_size * dL/dx_r on this rank's features x_r, and gradients on the
  replicated scalars (logit_scale, logit_bias) whose mean over ranks is dL/d(scalar); so DDP's
  gradient *averaging* over ranks yields exactly dL/dtheta, and regularisers added on every rank
  (L2AnchorLoss) keep their single-process weight.

Two ways to get there, picked by `gather_with_grad`:

* True (local-loss form, cheaper: local_batch x global_batch logits): this rank scores its own rows
  against the gathered columns; the gather's backward sums every rank's gradient into x_r. The
  per-rank value is this rank's share of L.
* False: the gather carries no gradient, so the local-loss form would silently drop the terms in
  which x_r is another rank's negative (open_clip's local_loss=True / gather_with_grad=False trap).
  Instead every rank scores the whole global batch (global x global logits), only its own slice keeps
  a gradient, and that gradient is multiplied by world_size. The per-rank value is L itself.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers import T5ForConditionalGeneration

LOGIT_SCALE_MAX = math.log(50)


# --------------------------------------------------------------------------------------------------
# Distributed plumbing


def _world_and_rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _all_gather_with_grad(tensor: Tensor) -> list[Tensor]:
    from torch.distributed.nn.functional import all_gather

    # Its backward sums (reduce-scatters) the gradients of every rank's copy back into `tensor`.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        return list(all_gather(tensor))


def gather_features(*tensors: Tensor, gather_with_grad: bool = False) -> tuple[Tensor, ...]:
    """All-gather each tensor along dim 0 across ranks -> [world_size * local_batch, ...] in rank order.

    Without grad, this rank's slice of the result is the input tensor itself, so only the local slice
    keeps its gradient. With grad, torch.distributed.nn.functional.all_gather routes the gradients of
    every rank's copy back to their owner. Identity when torch.distributed is not initialised or has
    a single rank. Every rank must pass tensors of the same shape.
    """
    world_size, rank = _world_and_rank()
    if world_size == 1:
        return tuple(tensors)
    gathered = []
    for tensor in tensors:
        if gather_with_grad:
            parts = _all_gather_with_grad(tensor)
        else:
            parts = [torch.empty_like(tensor) for _ in range(world_size)]
            with torch.no_grad():
                dist.all_gather(parts, tensor.contiguous())
            parts[rank] = tensor
        gathered.append(torch.cat(parts, dim=0))
    return tuple(gathered)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient multiplied by `scale` (world_size) in backward."""

    @staticmethod
    def forward(ctx, tensor: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def _global_batch(*tensors: Tensor, gather_with_grad: bool) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], int]:
    """(rows this rank scores, global columns it scores them against, global index of its first row).

    See the module docstring for why the two modes differ; both satisfy the scaling contract.
    """
    world_size, rank = _world_and_rank()
    if world_size == 1:
        return tensors, tensors, 0
    if gather_with_grad:
        return tensors, gather_features(*tensors, gather_with_grad=True), rank * tensors[0].shape[0]
    scaled = tuple(_ScaleGrad.apply(t, float(world_size)) for t in tensors)
    gathered = gather_features(*scaled, gather_with_grad=False)
    return gathered, gathered, 0


def _scale(logit_scale: Tensor | float, logit_scale_max: float | None, like: Tensor) -> Tensor:
    """exp(min(logit_scale, logit_scale_max)) from the log-temperature (a float becomes like's dtype)."""
    if not isinstance(logit_scale, Tensor):
        logit_scale = torch.tensor(logit_scale, dtype=like.dtype, device=like.device)
    if logit_scale_max is not None:
        logit_scale = logit_scale.clamp(max=logit_scale_max)
    return logit_scale.exp()


def _check_pair(a: Tensor, b: Tensor, a_name: str, b_name: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must both be [batch, dim]")


@torch.no_grad()
def clamp_logit_scale_(model_or_param: nn.Module | Tensor, max: float = LOGIT_SCALE_MAX) -> Tensor:
    """Clamp a log-temperature in place at `max` (call after each optimizer step); returns it.

    Accepts the parameter itself or any module (wrapped or not) holding a parameter named
    `logit_scale`, e.g. CLIPModel, SiglipModel, ReasonCLIPForPretraining, DDP(model).
    """
    if isinstance(model_or_param, Tensor):
        param = model_or_param
    else:
        found = [p for name, p in model_or_param.named_parameters() if name.split(".")[-1] == "logit_scale"]
        if len(found) != 1:
            raise ValueError(
                f"{type(model_or_param).__name__} has {len(found)} parameters named 'logit_scale', expected 1"
            )
        param = found[0]
    param.clamp_(max=max)
    return param


# --------------------------------------------------------------------------------------------------
# Contrastive losses


class ClipLoss(nn.Module):
    """Symmetric InfoNCE (CLIP) over the global batch.

    forward(image_features [b, D], text_features [b, D], logit_scale: log-temperature scalar)
    -> (CE(image->text) + CE(text->image)) / 2, positives at matching global indices.
    """

    def __init__(self, gather_with_grad: bool = False, logit_scale_max: float | None = LOGIT_SCALE_MAX):
        super().__init__()
        self.gather_with_grad = gather_with_grad
        self.logit_scale_max = logit_scale_max

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
        _check_pair(image_features, text_features, "image_features", "text_features")
        scale = _scale(logit_scale, self.logit_scale_max, image_features)
        (image_rows, text_rows), (image_cols, text_cols), offset = _global_batch(
            image_features, text_features, gather_with_grad=self.gather_with_grad
        )
        labels = offset + torch.arange(image_rows.shape[0], device=image_rows.device)
        image_to_text = F.cross_entropy(scale * image_rows @ text_cols.T, labels)
        text_to_image = F.cross_entropy(scale * text_rows @ image_cols.T, labels)
        return (image_to_text + text_to_image) / 2


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (Zhai et al., 2023) over the global batch.

    forward(image_features [b, D], text_features [b, D], logit_scale: log-temperature scalar,
    logit_bias: scalar) -> -sum_ij log sigmoid(z_ij * (t * <img_i, txt_j> + bias)) / num_images, with
    z = +1 on the (global) diagonal and -1 elsewhere; this rank's images against all texts, averaged
    over its images as in open_clip.

    `logit_scale_max` defaults to None (no clamp): released SigLIP checkpoints sit above ln 50, so
    clamping would change the pretrained model's temperature on the first step.
    """

    def __init__(self, gather_with_grad: bool = False, logit_scale_max: float | None = None):
        super().__init__()
        self.gather_with_grad = gather_with_grad
        self.logit_scale_max = logit_scale_max

    def forward(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float
    ) -> Tensor:
        _check_pair(image_features, text_features, "image_features", "text_features")
        scale = _scale(logit_scale, self.logit_scale_max, image_features)
        (image_rows, _), (_, text_cols), offset = _global_batch(
            image_features, text_features, gather_with_grad=self.gather_with_grad
        )
        logits = scale * image_rows @ text_cols.T + logit_bias
        rows = torch.arange(image_rows.shape[0], device=logits.device)
        signs = -torch.ones_like(logits)
        signs[rows, rows + offset] = 1.0
        return -F.logsigmoid(signs * logits).sum() / image_rows.shape[0]


class HardNegativeClipLoss(nn.Module):
    """NegCLIP contrastive loss with k hard-negative captions per caption, exact across ranks.

    forward(image_features [b, D], text_features [b, D] (positives),
            negative_text_features [k*b, D], logit_scale: log-temperature scalar)

    Negative layout: the negatives of caption i are rows i*k .. i*k+k-1 (caption-major, i.e.
    `negatives.reshape(b, k, D)[i]`). Positives and negatives are gathered separately, so the global
    text columns are [all B positives; all k*B negatives] whatever the number of ranks, and image i's
    label is its global index. Image->text CE runs over all B*(1+k) columns (every negative is a
    negative for every image, so only the [positives; negatives] block order matters); text->image CE
    over the B positives only; loss = (i2t + t2i) / 2. Each call is self-contained, so gradient
    accumulation just calls it per micro-batch with that micro-batch's images, positives, negatives.
    """

    def __init__(self, gather_with_grad: bool = False, logit_scale_max: float | None = LOGIT_SCALE_MAX):
        super().__init__()
        self.gather_with_grad = gather_with_grad
        self.logit_scale_max = logit_scale_max

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        negative_text_features: Tensor,
        logit_scale: Tensor | float,
    ) -> Tensor:
        _check_pair(image_features, text_features, "image_features", "text_features")
        batch, dim = image_features.shape
        num_negatives = negative_text_features.shape[0]
        if negative_text_features.ndim != 2 or negative_text_features.shape[1] != dim or num_negatives % batch:
            raise ValueError(
                f"negative_text_features {tuple(negative_text_features.shape)} must be [k*{batch}, {dim}] "
                f"(k negatives per caption, caption-major)"
            )
        scale = _scale(logit_scale, self.logit_scale_max, image_features)
        (image_rows, text_rows, _), (image_cols, text_cols, negative_cols), offset = _global_batch(
            image_features, text_features, negative_text_features, gather_with_grad=self.gather_with_grad
        )
        labels = offset + torch.arange(image_rows.shape[0], device=image_rows.device)
        all_texts = torch.cat([text_cols, negative_cols], dim=0)
        image_to_text = F.cross_entropy(scale * image_rows @ all_texts.T, labels)
        text_to_image = F.cross_entropy(scale * text_rows @ image_cols.T, labels)
        return (image_to_text + text_to_image) / 2


class ParaphraseAlignmentLoss(nn.Module):
    """READ's alignment loss: InfoNCE from paraphrases to their anchor captions, one direction.

    forward(paraphrase_features [b, D], anchor_features [b, D], logit_scale: CLIP's log-temperature)
    -> CE over (paraphrase_i . all global anchors) with anchor i as the positive.
    """

    def __init__(self, gather_with_grad: bool = False, logit_scale_max: float | None = LOGIT_SCALE_MAX):
        super().__init__()
        self.gather_with_grad = gather_with_grad
        self.logit_scale_max = logit_scale_max

    def forward(self, paraphrase_features: Tensor, anchor_features: Tensor, logit_scale: Tensor | float) -> Tensor:
        _check_pair(paraphrase_features, anchor_features, "paraphrase_features", "anchor_features")
        scale = _scale(logit_scale, self.logit_scale_max, paraphrase_features)
        (paraphrase_rows, _), (_, anchor_cols), offset = _global_batch(
            paraphrase_features, anchor_features, gather_with_grad=self.gather_with_grad
        )
        labels = offset + torch.arange(paraphrase_rows.shape[0], device=paraphrase_rows.device)
        return F.cross_entropy(scale * paraphrase_rows @ anchor_cols.T, labels)


# --------------------------------------------------------------------------------------------------
# Regularisers and auxiliary heads

# The published rule (ft_clip_r_s1.py): a parameter is anchored when its name contains "vision_model." or
# "text_model." and contains neither "projection" nor "logit_". So everything inside the two towers is
# anchored, SigLIP's text_model.head (its text projection) and attention-pooling vision_model.head included;
# CLIP's visual_projection / text_projection, logit_scale, logit_bias and the training heads are not.
_TOWERS = ("vision_model.", "text_model.")
_NOT_ANCHORED = ("projection", "logit_")


def is_anchored_parameter(name: str) -> bool:
    """The authors' L2-anchor rule on parameter names of transformers CLIPModel / SiglipModel.

    Substrings, as in their code, so wrapper prefixes (`module.`, `backbone.`, `base_model.model.`) keep it.
    """
    return any(t in name for t in _TOWERS) and not any(x in name for x in _NOT_ANCHORED)


class L2AnchorLoss(nn.Module):
    """beta * sum ||theta - theta0||^2 over the anchored parameters (the transformer towers).

    theta0 is copied at construction into one fp32 buffer `anchor` (so the loss's state_dict carries
    it: on resume, load it rather than re-anchoring to the resumed weights). The live parameters are
    held by reference, not registered, so the model's parameters are not duplicated in this module.
    Parameters may later move device or change dtype in place (`model.to("cuda")`, `.bfloat16()`,
    DDP, DeepSpeed ZeRO-1/2, PEFT wrapping): the anchor follows them to their device and the
    difference is taken in fp32. Conversions that replace the Parameter objects (FSDP flattening,
    ZeRO-3 partitioning, `to("meta")`) are not followed: build the loss after them.
    Gradient: 2 * beta * (theta - theta0). Under gradient accumulation add it once per optimizer
    step (or divide it like the other losses).
    """

    def __init__(
        self,
        model: nn.Module,
        beta: float = 1e-5,
        include: Callable[[str], bool] = is_anchored_parameter,
    ):
        super().__init__()
        named = [(name, p) for name, p in model.named_parameters() if include(name)]
        if not named:
            raise ValueError(f"no parameter of {type(model).__name__} matches the L2-anchor rule")
        self.beta = beta
        self.names: tuple[str, ...] = tuple(name for name, _ in named)
        self._params: list[nn.Parameter] = [p for _, p in named]
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).float() for p in self._params])
        self.register_buffer("anchor", flat, persistent=True)
        self._views_key: tuple | None = None
        self._views: list[Tensor] = []

    def _anchor_views(self) -> list[Tensor]:
        key = (self.anchor.device, self.anchor.data_ptr())
        if key != self._views_key:
            chunks = self.anchor.split([p.numel() for p in self._params])
            self._views = [chunk.view(p.shape) for chunk, p in zip(chunks, self._params)]
            self._views_key = key
        return self._views

    def forward(self) -> Tensor:
        device = self._params[0].device
        if self.anchor.device != device:
            self.anchor = self.anchor.to(device)
        return self.beta * _SquaredDistance.apply(self._anchor_views(), *self._params)


def _as_fp32(tensors: tuple[Tensor, ...]) -> list[Tensor]:
    return [t if t.dtype == torch.float32 else t.float() for t in tensors]  # no copy for fp32


class _SquaredDistance(torch.autograd.Function):
    """sum_i ||p_i - a_i||^2 (fp32) over lists of tensors; gradient 2 (p_i - a_i).

    Autograd of the same expression written with foreach ops keeps every difference alive until
    backward (a second copy of the anchored weights) and differentiates `_foreach_norm` one parameter
    at a time (a chain of small kernels per tensor: ~35 ms per step for ViT-L/14 on an H100). Here
    both passes are a few multi-tensor kernels and nothing is kept but references.
    """

    @staticmethod
    def forward(ctx, anchors: list[Tensor], *params: Tensor) -> Tensor:  # type: ignore[override]
        ctx.anchors = anchors
        ctx.save_for_backward(*params)
        diffs = torch._foreach_sub(_as_fp32(params), anchors)
        return torch.stack(torch._foreach_norm(diffs)).square().sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        params = ctx.saved_tensors
        grads = torch._foreach_sub(_as_fp32(params), ctx.anchors)
        torch._foreach_mul_(grads, 2.0 * grad)
        return (None, *(g if g.dtype == p.dtype else g.to(p.dtype) for g, p in zip(grads, params)))


class CategoryLoss(nn.Module):
    """Stage-2 category supervision: gamma * (CE(text categories) + BCE(image multi-hot categories)).

    forward(text_logits [B, C] float, text_category [B] long in [0, C),
            image_logits [B, C] float, image_multi_hot [B, C] float in {0, 1})
    -> (total, {"text_ce": ..., "image_bce": ...}); the parts are unweighted, total = gamma * sum.
    BCE is the mean over all B*C entries.
    """

    def __init__(self, gamma: float = 0.05):
        super().__init__()
        self.gamma = gamma

    def forward(
        self, text_logits: Tensor, text_category: Tensor, image_logits: Tensor, image_multi_hot: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if text_logits.ndim != 2 or text_category.shape != text_logits.shape[:1]:
            raise ValueError(
                f"text_logits {tuple(text_logits.shape)} must be [B, C] and text_category [B], "
                f"got {tuple(text_category.shape)}"
            )
        if text_category.dtype != torch.long:
            raise ValueError(f"text_category must be int64 class indices, got {text_category.dtype}")
        if image_logits.shape != image_multi_hot.shape or image_logits.ndim != 2:
            raise ValueError(
                f"image_logits {tuple(image_logits.shape)} and image_multi_hot "
                f"{tuple(image_multi_hot.shape)} must both be [B, C]"
            )
        text_ce = F.cross_entropy(text_logits, text_category)
        image_bce = F.binary_cross_entropy_with_logits(image_logits, image_multi_hot.to(image_logits.dtype))
        return self.gamma * (text_ce + image_bce), {"text_ce": text_ce, "image_bce": image_bce}


class ReconstructionLoss(nn.Module):
    """READ's reconstruction loss through a frozen T5 decoder.

    forward(text_pooled [B, Dt] (text encoder's pooled state BEFORE its projection: CLIP's EOS state),
            projector (the model's bias-free Linear(Dt -> d_model), e.g.
            ReasonCLIPForPretraining.recon_projector; it is passed in, the model owns and saves it),
            target_ids [B, L] (another caption of the image, T5-tokenised),
            target_mask [B, L] or None (1 = real token; None: ids == T5 pad id are padding))
    -> token-mean cross-entropy of T5 decoding target_ids from the projected embedding, fed as a
    length-1 encoder output (only T5's decoder and lm_head run). Padding gets label -100, so its ids
    never matter (T5 turns -100 back into pad when it shifts labels into decoder inputs).

    The T5 model is frozen (requires_grad=False) and kept outside the module tree: this loss has no
    parameters and an empty state_dict, yet gradients flow through T5 into the projector and the text
    encoder. `.to()` on the loss also moves T5. `dropout=False`: T5 stays in eval mode (a deterministic
    loss); `dropout=True`: T5 follows the loss's train()/eval(), as READ's run does (its Trainer puts the
    whole model, the frozen decoder included, in train mode, so T5's dropout is active while training).
    """

    def __init__(self, t5: "T5ForConditionalGeneration", dropout: bool = False):
        super().__init__()
        t5.requires_grad_(False)
        object.__setattr__(self, "t5", t5)  # not a submodule: never saved or optimised with the loss
        self.dropout = dropout
        self.train(self.training)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        self.t5._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> "ReconstructionLoss":
        super().train(mode)
        self.t5.train(mode and self.dropout)
        return self

    def forward(
        self,
        text_pooled: Tensor,
        projector: nn.Module,
        target_ids: Tensor,
        target_mask: Tensor | None = None,
    ) -> Tensor:
        from transformers.modeling_outputs import BaseModelOutput

        if target_ids.ndim != 2 or target_ids.shape[0] != text_pooled.shape[0]:
            raise ValueError(f"target_ids {tuple(target_ids.shape)} must be [{text_pooled.shape[0]}, L]")
        if target_mask is None:
            target_mask = target_ids.ne(self.t5.config.pad_token_id)
        elif target_mask.shape != target_ids.shape:
            raise ValueError(f"target_mask {tuple(target_mask.shape)} must match target_ids {tuple(target_ids.shape)}")
        projected = projector(text_pooled)
        d_model = self.t5.config.d_model
        if projected.shape != (text_pooled.shape[0], d_model):
            raise ValueError(
                f"projector maps {tuple(text_pooled.shape)} to {tuple(projected.shape)}; T5 needs [B, {d_model}]"
            )
        dtype = next(self.t5.parameters()).dtype
        encoder_outputs = BaseModelOutput(last_hidden_state=projected.unsqueeze(1).to(dtype))
        labels = target_ids.masked_fill(~target_mask.bool(), -100)
        return self.t5(encoder_outputs=encoder_outputs, labels=labels, use_cache=False, return_dict=True).loss


__all__ = [
    "LOGIT_SCALE_MAX",
    "gather_features",
    "clamp_logit_scale_",
    "ClipLoss",
    "SigLipLoss",
    "HardNegativeClipLoss",
    "ParaphraseAlignmentLoss",
    "is_anchored_parameter",
    "L2AnchorLoss",
    "CategoryLoss",
    "ReconstructionLoss",
]
