"""reasonclip_llava.losses against references computed another way (open_clip, naive loops, T5 itself)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reasonclip_llava.losses import (
    LOGIT_SCALE_MAX,
    CategoryLoss,
    ClipLoss,
    HardNegativeClipLoss,
    L2AnchorLoss,
    ParaphraseAlignmentLoss,
    ReconstructionLoss,
    SigLipLoss,
    clamp_logit_scale_,
    gather_features,
    is_anchored_parameter,
)

# ------------------------------------------------------------------------------------ references


def _open_clip_loss_module():
    """open_clip/loss.py loaded on its own (importing the open_clip package needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        pytest.skip("open-clip-torch is not installed")
    path = Path(spec.origin).with_name("loss.py")
    loss_spec = importlib.util.spec_from_file_location("open_clip_loss_standalone", path)
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)  # imports only torch (+ optional horovod)
    return module


def _logsumexp(values: list[torch.Tensor]) -> torch.Tensor:
    top = max(v.detach() for v in values)
    return top + torch.log(sum(torch.exp(v - top) for v in values))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


def _naive_info_nce(rows: torch.Tensor, cols: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """mean_i [logsumexp_j s<r_i, c_j> - s<r_i, c_i>], one row and one column at a time."""
    terms = []
    for i in range(rows.shape[0]):
        logits = [scale * _dot(rows[i], cols[j]) for j in range(cols.shape[0])]
        terms.append(_logsumexp(logits) - logits[i])
    return sum(terms) / len(terms)


def naive_clip(image, text, scale):
    return (_naive_info_nce(image, text, scale) + _naive_info_nce(text, image, scale)) / 2


def naive_siglip(image, text, scale, bias):
    total = 0.0
    for i in range(image.shape[0]):
        for j in range(text.shape[0]):
            z = 1.0 if i == j else -1.0
            logit = scale * _dot(image[i], text[j]) + bias
            total = total - torch.log(1 / (1 + torch.exp(-z * logit)))
    return total / image.shape[0]


def naive_hard_negative(image, text, negatives, scale):
    """NegCLIP: image i against [all positives; all negatives], text i against the images."""
    b, k = image.shape[0], negatives.shape[0] // image.shape[0]
    i2t = []
    for i in range(b):
        logits = [scale * _dot(image[i], text[j]) for j in range(b)]
        logits += [scale * _dot(image[i], negatives[c * k + n]) for c in range(b) for n in range(k)]
        i2t.append(_logsumexp(logits) - logits[i])
    return (sum(i2t) / b + _naive_info_nce(text, image, scale)) / 2


def naive_paraphrase(paraphrase, anchor, scale):
    return _naive_info_nce(paraphrase, anchor, scale)


def _features(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _leaves(*tensors):
    return [t.clone().requires_grad_(True) for t in tensors]


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


CLOSE = dict(rtol=1e-9, atol=1e-12)

# ------------------------------------------------------------------------------------ gather


def test_gather_features_is_identity_without_process_group():
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    gx, gy = gather_features(x, y)
    assert gx is x and gy is y
    assert gather_features(x, gather_with_grad=True)[0] is x


# ------------------------------------------------------------------------------------ CLIP


def test_clip_loss_matches_open_clip():
    open_clip_loss = _open_clip_loss_module()
    image, text = _leaves(_features(7, 5, seed=1), _features(7, 5, seed=2))
    log_scale = torch.tensor(math.log(20.0), dtype=torch.float64, requires_grad=True)

    ours = ClipLoss()(image, text, log_scale)
    theirs = open_clip_loss.ClipLoss()(image, text, log_scale.exp())  # open_clip takes exp(scale)

    torch.testing.assert_close(ours, theirs, **CLOSE)
    for a, b in zip(_grads(ours, [image, text, log_scale]), _grads(theirs, [image, text, log_scale])):
        torch.testing.assert_close(a, b, **CLOSE)


def test_siglip_loss_matches_open_clip():
    open_clip_loss = _open_clip_loss_module()
    image, text = _leaves(_features(6, 5, seed=3), _features(6, 5, seed=4))
    log_scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-10.0 + 3.0, dtype=torch.float64, requires_grad=True)

    ours = SigLipLoss()(image, text, log_scale, bias)
    theirs = open_clip_loss.SigLipLoss()(image, text, log_scale.exp(), bias)

    torch.testing.assert_close(ours, theirs, **CLOSE)
    for a, b in zip(_grads(ours, [image, text, log_scale, bias]), _grads(theirs, [image, text, log_scale, bias])):
        torch.testing.assert_close(a, b, **CLOSE)


@pytest.mark.parametrize(
    "name",
    ["clip", "siglip", "hard_negative", "paraphrase"],
)
def test_losses_match_naive_loops(name):
    b, d, k = 5, 6, 3
    image, text, negatives = _leaves(_features(b, d, seed=5), _features(b, d, seed=6), _features(k * b, d, seed=7))
    log_scale = torch.tensor(math.log(15.0), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    scale = log_scale.exp()
    if name == "clip":
        inputs = [image, text, log_scale]
        ours, ref = ClipLoss()(image, text, log_scale), naive_clip(image, text, scale)
    elif name == "siglip":
        inputs = [image, text, log_scale, bias]
        ours, ref = SigLipLoss()(image, text, log_scale, bias), naive_siglip(image, text, scale, bias)
    elif name == "hard_negative":
        inputs = [image, text, negatives, log_scale]
        ours = HardNegativeClipLoss()(image, text, negatives, log_scale)
        ref = naive_hard_negative(image, text, negatives, scale)
    else:
        inputs = [image, text, log_scale]
        ours, ref = ParaphraseAlignmentLoss()(image, text, log_scale), naive_paraphrase(image, text, scale)

    torch.testing.assert_close(ours, ref, **CLOSE)
    for a, b_ in zip(_grads(ours, inputs), _grads(ref, inputs)):
        torch.testing.assert_close(a, b_, **CLOSE)


def test_logit_scale_is_clamped_at_ln50():
    image, text, negatives = _features(4, 5, seed=8), _features(4, 5, seed=9), _features(8, 5, seed=10)
    high = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    at_max = torch.tensor(math.log(50), dtype=torch.float64)
    for loss_fn, args in [
        (ClipLoss(), (image, text)),
        (HardNegativeClipLoss(), (image, text, negatives)),
        (ParaphraseAlignmentLoss(), (image, text)),
    ]:
        clamped = loss_fn(*args, high)
        torch.testing.assert_close(clamped, loss_fn(*args, at_max), **CLOSE)
        assert not torch.allclose(clamped, loss_fn(*args, torch.tensor(math.log(49.0), dtype=torch.float64)))
        (grad,) = torch.autograd.grad(clamped, high)
        assert grad.item() == 0.0
    # Below the bound nothing is clamped; the bound can be lifted.
    torch.testing.assert_close(ClipLoss()(image, text, math.log(20.0)), naive_clip(image, text, 20.0), **CLOSE)
    unclamped = ClipLoss(logit_scale_max=None)(image, text, 5.0)
    torch.testing.assert_close(unclamped, naive_clip(image, text, math.exp(5.0)), **CLOSE)


def test_clamp_logit_scale_in_place():
    from transformers import CLIPModel

    from reasonclip_llava.testing.tiny import tiny_clip_config

    model = CLIPModel(tiny_clip_config())
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))  # OpenAI CLIP's value
    returned = clamp_logit_scale_(model)
    assert returned is model.logit_scale
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)
    param = nn.Parameter(torch.tensor(1.0))
    clamp_logit_scale_(param)
    assert param.item() == 1.0
    with pytest.raises(ValueError, match="logit_scale"):
        clamp_logit_scale_(nn.Linear(2, 2))


def test_contrastive_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="text_features"):
        ClipLoss()(torch.randn(4, 5), torch.randn(3, 5), 1.0)
    with pytest.raises(ValueError, match="negative_text_features"):
        HardNegativeClipLoss()(torch.randn(4, 5), torch.randn(4, 5), torch.randn(6, 5), 1.0)


# ------------------------------------------------------------------------------------ hard negatives


def test_hard_negative_loss_without_negatives_is_clip_loss():
    image, text = _features(5, 4, seed=11), _features(5, 4, seed=12)
    empty = torch.empty(0, 4, dtype=torch.float64)
    torch.testing.assert_close(HardNegativeClipLoss()(image, text, empty, 2.0), ClipLoss()(image, text, 2.0), **CLOSE)


def test_hard_negative_loss_is_invariant_to_sample_order():
    """Shuffling samples together with their negative blocks changes nothing (no block-order bug)."""
    b, k = 6, 3
    image, text, negatives = _features(b, 4, seed=13), _features(b, 4, seed=14), _features(k * b, 4, seed=15)
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(0))
    shuffled_negatives = negatives.reshape(b, k, 4)[perm].reshape(k * b, 4)
    loss_fn = HardNegativeClipLoss()
    torch.testing.assert_close(
        loss_fn(image[perm], text[perm], shuffled_negatives, 2.5), loss_fn(image, text, negatives, 2.5), **CLOSE
    )
    # The negatives are really used: they enlarge the image->text softmax.
    assert loss_fn(image, text, negatives, 2.5) > loss_fn(image, text, negatives[:0], 2.5)


def test_hard_negative_loss_under_gradient_accumulation():
    """Two micro-batches, one backward each: grads are the sum of each micro-batch's own loss."""
    b, k, d = 4, 2, 5
    image, text, negatives = _leaves(
        _features(2 * b, d, seed=16), _features(2 * b, d, seed=17), _features(2 * k * b, d, seed=18)
    )
    log_scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    loss_fn = HardNegativeClipLoss()
    for micro in range(2):
        rows, neg_rows = slice(micro * b, (micro + 1) * b), slice(micro * k * b, (micro + 1) * k * b)
        loss_fn(image[rows], text[rows], negatives[neg_rows], log_scale).backward()
    accumulated = [image.grad, text.grad, negatives.grad, log_scale.grad]

    ref_inputs = _leaves(image.detach(), text.detach(), negatives.detach(), log_scale.detach())
    ref_total = sum(
        naive_hard_negative(
            ref_inputs[0][m * b : (m + 1) * b], ref_inputs[1][m * b : (m + 1) * b],
            ref_inputs[2][m * k * b : (m + 1) * k * b], ref_inputs[3].exp(),
        )
        for m in range(2)
    )
    for ours, ref in zip(accumulated, torch.autograd.grad(ref_total, ref_inputs)):
        torch.testing.assert_close(ours, ref, **CLOSE)


# ------------------------------------------------------------------------------------ L2 anchor

CLIP_NOT_ANCHORED = {"visual_projection.weight", "text_projection.weight", "logit_scale"}
# The authors' rule: SigLIP's text_model.head (its text projection) IS anchored; only names with
# "projection" or "logit_" are left out (METHOD.md, ft_clip_r_s1.py).
SIGLIP_NOT_ANCHORED = {"logit_scale", "logit_bias"}


def _tiny_clip():
    from transformers import CLIPModel

    from reasonclip_llava.testing.tiny import tiny_clip_config

    torch.manual_seed(0)
    return CLIPModel(tiny_clip_config())


def _perturb_(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g).to(p.dtype))


def _naive_anchor(model, theta0: dict[str, torch.Tensor], excluded: set[str], beta: float) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float32)
    for name, p in model.named_parameters():
        if name not in excluded:
            total = total + ((p.float() - theta0[name]) ** 2).sum()
    return beta * total


def test_anchor_rule_on_clip_and_siglip_names():
    from transformers import SiglipModel

    from reasonclip_llava.testing.tiny import tiny_siglip_config

    clip = _tiny_clip()
    clip_names = {n for n, _ in clip.named_parameters()}
    assert set(L2AnchorLoss(clip).names) == clip_names - CLIP_NOT_ANCHORED
    siglip = SiglipModel(tiny_siglip_config())
    siglip_names = {n for n, _ in siglip.named_parameters()}
    assert set(L2AnchorLoss(siglip).names) == siglip_names - SIGLIP_NOT_ANCHORED
    assert is_anchored_parameter("vision_model.head.attention.in_proj_weight")  # SigLIP attention pooling
    assert is_anchored_parameter("backbone.text_model.head.weight")  # SigLIP's text head, as published
    # Wrapper prefixes (training model, DDP, PEFT) keep the rule; heads outside the towers are excluded.
    assert is_anchored_parameter("backbone.text_model.encoder.layers.0.mlp.fc1.weight")
    assert is_anchored_parameter("module.base_model.model.vision_model.embeddings.patch_embedding.weight")
    assert not is_anchored_parameter("backbone.visual_projection.weight")
    assert not is_anchored_parameter("category_heads.text_head.weight")
    assert not is_anchored_parameter("recon_projector.weight")
    with pytest.raises(ValueError, match="Linear"):
        L2AnchorLoss(nn.Linear(2, 2))


def test_l2_anchor_matches_naive_loop_and_gradient():
    model = _tiny_clip()
    theta0 = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    beta = 0.5
    anchor = L2AnchorLoss(model, beta=beta)
    assert anchor.beta == 0.5 and L2AnchorLoss(model).beta == 1e-5
    start = anchor()
    assert start.item() == 0.0
    start.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())  # no NaN at zero
    model.zero_grad()

    _perturb_(model)
    loss = anchor()
    # fp32 reductions over the 1.6M-entry token embedding agree to ~1e-5 relative on CPU.
    torch.testing.assert_close(loss, _naive_anchor(model, theta0, CLIP_NOT_ANCHORED, beta), rtol=1e-4, atol=0)
    assert loss.item() > 0
    loss.backward()
    for name, p in model.named_parameters():
        if name in CLIP_NOT_ANCHORED:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, 2 * beta * (p.detach() - theta0[name]), rtol=1e-5, atol=1e-8)

    # Excluded parameters really are excluded.
    with torch.no_grad():
        model.visual_projection.weight.add_(1.0)
        model.text_projection.weight.mul_(3.0)
        model.logit_scale.add_(1.0)
    torch.testing.assert_close(anchor(), loss.detach(), rtol=0, atol=0)


def test_l2_anchor_handles_dtype_change_and_resume():
    model = _tiny_clip()
    theta0 = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    anchor = L2AnchorLoss(model, beta=1.0)
    assert anchor.anchor.dtype == torch.float32
    model.to(torch.bfloat16)  # in place: the loss still sees the live parameters
    _perturb_(model, seed=1)
    loss = anchor()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, _naive_anchor(model, theta0, CLIP_NOT_ANCHORED, 1.0), rtol=1e-4, atol=0)

    # Resume: a loss built from the trained model, then loaded with the saved state, anchors at theta0.
    resumed = L2AnchorLoss(model, beta=1.0)
    assert resumed().item() == 0.0
    resumed.load_state_dict(anchor.state_dict())
    torch.testing.assert_close(resumed(), loss, rtol=0, atol=0)
    assert list(anchor.state_dict()) == ["anchor"]  # the model itself is not in the loss's state


# ------------------------------------------------------------------------------------ categories


def test_category_loss_by_hand():
    text_logits = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0, 0.0]])
    text_category = torch.tensor([0, 3])
    image_logits = torch.tensor([[1.0, -1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 3.0]])
    image_multi_hot = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0, 1.0]])

    ce0 = math.log(math.exp(2) + 4) - 2  # row 0, class 0
    ce1 = math.log(1 + math.e + 1 + math.exp(-1) + 1) - (-1)  # row 1, class 3
    text_ce = (ce0 + ce1) / 2

    def bce(x, y):
        sig = 1 / (1 + math.exp(-x))
        return -(y * math.log(sig) + (1 - y) * math.log(1 - sig))

    pairs = zip(image_logits.flatten().tolist(), image_multi_hot.flatten().tolist())
    image_bce = sum(bce(x, y) for x, y in pairs) / 10

    total, parts = CategoryLoss(gamma=0.05)(text_logits, text_category, image_logits, image_multi_hot)
    assert parts["text_ce"].item() == pytest.approx(text_ce, rel=1e-6)
    assert parts["image_bce"].item() == pytest.approx(image_bce, rel=1e-6)
    assert total.item() == pytest.approx(0.05 * (text_ce + image_bce), rel=1e-6)
    assert CategoryLoss().gamma == 0.05


def test_category_loss_rejects_bad_inputs():
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="int64"):
        CategoryLoss()(logits, torch.tensor([0.0, 1.0]), logits, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="image_multi_hot"):
        CategoryLoss()(logits, torch.tensor([0, 1]), logits, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="text_category"):
        CategoryLoss()(logits, torch.tensor([0, 1, 2]), logits, torch.zeros(2, 5))


# ------------------------------------------------------------------------------------ reconstruction

TEXT_WIDTH = 12


def _tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,  # t5-v1_1 style
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.1,
    )
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config)


def _recon_batch():
    g = torch.Generator().manual_seed(3)
    pooled = torch.randn(3, TEXT_WIDTH, generator=g, requires_grad=True)
    ids = torch.randint(2, 40, (3, 7), generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    ids = ids.masked_fill(mask == 0, 0)
    return pooled, ids, mask


def test_reconstruction_loss_matches_t5_and_a_manual_decoder_pass():
    t5 = _tiny_t5()
    loss_fn = ReconstructionLoss(t5)
    projector = nn.Linear(TEXT_WIDTH, 16, bias=False)
    pooled, ids, mask = _recon_batch()
    ours = loss_fn(pooled, projector, ids, mask)

    hidden = projector(pooled).unsqueeze(1)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        via_t5 = t5(encoder_outputs=(hidden,), labels=labels).loss
        # The same thing by hand: shift right, decoder over the length-1 "encoder output", lm_head, CE.
        decoder_inputs = torch.cat([torch.zeros(3, 1, dtype=torch.long), ids[:, :-1]], dim=1)
        states = t5.decoder(input_ids=decoder_inputs, encoder_hidden_states=hidden).last_hidden_state
        logits = t5.lm_head(states)
        token_losses = [
            F.cross_entropy(logits[i, j : j + 1], ids[i, j : j + 1])
            for i in range(3) for j in range(7) if mask[i, j]
        ]
        manual = torch.stack(token_losses).mean()
    torch.testing.assert_close(ours, via_t5, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours, manual, rtol=1e-5, atol=1e-5)
    assert not t5.training  # frozen decoder runs without dropout: the loss is deterministic
    torch.testing.assert_close(loss_fn(pooled, projector, ids, mask), ours, rtol=0, atol=0)


def test_reconstruction_loss_keeps_t5_frozen_and_out_of_state():
    t5 = _tiny_t5()
    loss_fn = ReconstructionLoss(t5)
    projector = nn.Linear(TEXT_WIDTH, 16, bias=False)
    pooled, ids, mask = _recon_batch()
    loss_fn(pooled, projector, ids, mask).backward()

    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    assert all(not p.requires_grad and p.grad is None for p in t5.parameters())
    assert projector.weight.grad is not None and projector.weight.grad.abs().sum() > 0
    assert pooled.grad is not None and pooled.grad.abs().sum() > 0  # flows on into the text encoder
    loss_fn.train()
    assert not t5.training
    loss_fn.to(torch.float64)
    assert next(t5.parameters()).dtype == torch.float64  # moves with the loss


def test_reconstruction_loss_ignores_padding():
    loss_fn = ReconstructionLoss(_tiny_t5())
    projector = nn.Linear(TEXT_WIDTH, 16, bias=False)
    pooled, ids, mask = _recon_batch()
    reference = loss_fn(pooled, projector, ids, mask)
    noise = torch.randint(2, 40, ids.shape, generator=torch.Generator().manual_seed(9))
    scrambled = torch.where(mask.bool(), ids, noise)
    assert not torch.equal(scrambled, ids)
    torch.testing.assert_close(loss_fn(pooled, projector, scrambled, mask), reference, rtol=0, atol=0)
    # Without a mask, T5's pad id marks the padding.
    torch.testing.assert_close(loss_fn(pooled, projector, ids), reference, rtol=0, atol=0)
    # Real tokens do count.
    changed = ids.clone()
    changed[0, 0] = 3 if ids[0, 0] != 3 else 4
    assert not torch.allclose(loss_fn(pooled, projector, changed, mask), reference)


def test_reconstruction_loss_rejects_a_projector_of_the_wrong_width():
    loss_fn = ReconstructionLoss(_tiny_t5())
    pooled, ids, mask = _recon_batch()
    with pytest.raises(ValueError, match="T5 needs"):
        loss_fn(pooled, nn.Linear(TEXT_WIDTH, 8, bias=False), ids, mask)


def test_l2_anchor_follows_the_parameters_device():
    """The anchor moves next to the parameters on first use (meta stands in for an accelerator)."""
    from transformers import CLIPModel

    from reasonclip_llava.testing.tiny import tiny_clip_config

    with torch.device("meta"):
        model = CLIPModel(tiny_clip_config())
    anchor = L2AnchorLoss(model).to_empty(device="cpu")
    assert anchor.anchor.device.type == "cpu"
    loss = anchor()
    assert loss.device.type == "meta" and loss.shape == ()
    assert anchor.anchor.device.type == "meta"
