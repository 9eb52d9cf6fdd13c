"""Every attention backend computes the same sliding-window causal attention as a naive
reference, forward and backward. A backend that silently dropped the windows would train a
different model, so windows smaller than the sequence are tested on purpose."""

import math

import pytest
import torch

from trainer import train

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def naive_attention(q, k, v, window):
    """Softmax attention written out: query i sees key j iff 0 <= i - j < window."""
    B, T, H, D = q.shape
    allowed = torch.tensor([[0 <= i - j < window for j in range(T)] for i in range(T)], device=q.device)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(D)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(dim=-1), v)


def backends(need_backward):
    """The backends this machine can run: SDPA always; flex forward anywhere, its backward on
    CUDA only (PyTorch's CPU flex has no backward); FA3 when it loaded."""
    names = ["sdpa"]
    if DEVICE == "cuda" or not need_backward:
        names.append("flex")
    if train._FA3 is not None:
        names.append("fa3")
    return names


def inputs(T, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shape = (2, T, 3, 16)
    return [torch.randn(shape, generator=g, dtype=dtype).to(DEVICE).requires_grad_() for _ in range(3)]


WINDOWS = [1, 5, 16, 48, 64]  # from "only itself" to the whole sequence


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("backend", backends(need_backward=False))
def test_forward_matches_the_naive_reference(backend, window):
    q, k, v = (t.detach() for t in inputs(T=64))
    with torch.no_grad():
        got = train.attention(q, k, v, window, backend=backend)
        want = naive_attention(q, k, v, window)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("backend", backends(need_backward=True))
def test_gradients_match_the_naive_reference(backend, window):
    q, k, v = inputs(T=64, seed=1)
    upstream = torch.randn(2, 64, 3, 16, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    (train.attention(q, k, v, window, backend=backend) * upstream).sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (naive_attention(q, k, v, window) * upstream).sum().backward()
    for g, t in zip(got, (q, k, v)):
        torch.testing.assert_close(g, t.grad, atol=2e-5, rtol=1e-4)


def test_a_short_window_really_limits_what_a_query_sees():
    q, k, v = inputs(T=32, seed=3)
    with torch.no_grad():
        base = train.attention(q, k, v, 4, backend="sdpa")
        v2 = v.clone()
        v2[:, :10] += 100.0  # change keys 0..9: queries 13 and later cannot see them
        moved = train.attention(q, k, v2, 4, backend="sdpa")
    assert torch.equal(base[:, 13:], moved[:, 13:])
    assert not torch.allclose(base[:, 9], moved[:, 9])


def test_the_model_gives_short_windows_to_s_layers_and_full_context_to_the_last():
    cfg = train.GPTConfig(sequence_len=64, vocab_size=50, n_layer=5, n_head=2, n_embd=32,
                          window_pattern="SSL", short_window=16)
    model = train.GPT(cfg)
    assert model.windows == [16, 16, 64, 16, 64]
