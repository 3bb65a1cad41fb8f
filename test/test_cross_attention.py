"""The cross block's attention on a CPU: no denormal softmax weights, the same result as the plain softmax."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mambaglue_ros.models import mambaglue as mg

TINY = torch.finfo(torch.float32).tiny  # float32's smallest normal number


def sharp_inputs(m: int = 40, n: int = 300, spread: float = 200.0, seed: int = 0):
    """q, k (1, 1, ., 8) whose logits spread over ``spread`` nats per row, as a trained cross attention's do."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, m, 8, generator=g)
    k = torch.randn(1, 1, n, 8, generator=g)
    logits = q @ k.transpose(-1, -2)
    scale = spread / float((logits.amax(-1) - logits.amin(-1)).mean())
    return q * math.sqrt(scale), k * math.sqrt(scale)


def weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention weights themselves: softmax_attention with v = identity."""
    return mg.softmax_attention(q, k, torch.eye(k.shape[2])[None, None], mask)


def test_sharp_attention_has_no_denormal_weights_and_the_plain_softmax_result():
    q, k = sharp_inputs()
    plain = F.softmax(q @ k.transpose(-1, -2), dim=-1)
    assert ((plain > 0) & (plain < TINY)).any(), "the inputs do not reach the denormal range"
    w = weights(q, k)
    assert not ((w > 0) & (w < TINY)).any()
    assert (w > 0).all()  # raised, not dropped: every weight is e^-60 of the row's largest or more
    torch.testing.assert_close(w, plain, rtol=1e-6, atol=1e-25)
    v = torch.randn(1, 1, k.shape[2], 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mg.softmax_attention(q, k, v, None), plain @ v)  # no float32 sum changes


def test_the_floor_can_be_switched_off(monkeypatch):
    q, k = sharp_inputs()
    monkeypatch.setattr(mg, "DENORMAL_FLOOR", math.inf)
    w = weights(q, k)
    assert ((w > 0) & (w < TINY)).any()  # the old behaviour, which benchmarks/denormals.py times


def test_masked_weights_stay_zero_and_fully_masked_rows_give_zero():
    q, k = sharp_inputs(m=6, n=50)
    mask = torch.ones(1, 1, 6, 50, dtype=torch.bool)
    mask[..., 1, 30:] = False  # padding of image 1 for one query
    mask[..., 2, :] = False  # a padding query
    # A masked key far more similar than the real ones must not set the row's floor.
    k = k.clone()
    k[..., 49, :] = q[..., 1, :] * 50
    w = weights(q, k, mask)
    assert torch.equal(w[..., 1, 30:], torch.zeros_like(w[..., 1, 30:]))
    assert torch.equal(w[..., 2, :], torch.zeros_like(w[..., 2, :]))
    expected = F.softmax(q[..., 1:2, :] @ k[..., :30, :].transpose(-1, -2), dim=-1)[..., 0, :]
    # (logits of ~100: the two products' rounding differs by ~1e-5 in a logit)
    torch.testing.assert_close(w[..., 1, :30], expected, rtol=1e-4, atol=1e-25)
    assert not ((w > 0) & (w < TINY)).any()


def plain_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The masked softmax attention without a floor; rows without a key give 0 (computed on unmasked logits, so
    their gradients are finite too)."""
    sim = q @ k.transpose(-1, -2)
    if mask is None:
        return F.softmax(sim, -1) @ v
    has_key = mask.any(-1, keepdim=True)
    sim = sim.masked_fill(~mask & has_key, -float("inf"))
    return (F.softmax(sim, -1) @ v) * has_key


@pytest.mark.parametrize("masked", [False, True])
def test_gradients_are_the_plain_softmax_gradients_where_the_floor_acts(masked):
    """Training runs the same function: a batch of two, two heads, logits over 200 nats (most raised by the floor),
    padding in the batch; the gradients are finite (padding queries, whose every key is masked, once gave NaN) and
    the plain masked softmax's."""
    g = torch.Generator().manual_seed(3)
    q, k = sharp_inputs(m=24, n=70)
    q = torch.cat([q, q.flip(2)], 1).repeat(2, 1, 1, 1)  # (2, 2, 24, 8)
    k = torch.cat([k, k.flip(2)], 1).repeat(2, 1, 1, 1)  # (2, 2, 70, 8)
    v = torch.randn(2, 2, 70, 4, generator=g)
    mask = None
    if masked:
        valid0, valid1 = torch.ones(2, 24, dtype=torch.bool), torch.ones(2, 70, dtype=torch.bool)
        valid0[1, 20:], valid1[1, 50:] = False, False  # the second pair is padded on both sides
        mask = (valid0[:, None, :, None] & valid1[:, None, None, :])
    grads = []
    for fn in (mg.softmax_attention, plain_masked):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        fn(qq, kk, vv, mask).square().sum().backward()
        grads.append((qq.grad, kk.grad, vv.grad))
    for ours, plain in zip(*grads):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-20)
