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


def test_gradients_are_the_plain_softmax_gradients():
    q, k = sharp_inputs(m=8, n=60, spread=40.0)  # within the floor: the same function, the same gradients
    v = torch.randn(1, 1, 60, 4, generator=torch.Generator().manual_seed(2))
    grads = []
    for fn in (lambda q, k: mg.softmax_attention(q, k, v, None), lambda q, k: F.softmax(q @ k.transpose(-1, -2), -1) @ v):
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        fn(qq, kk).square().sum().backward()
        grads.append((qq.grad, kk.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
