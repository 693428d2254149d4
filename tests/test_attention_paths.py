"""Fused SDPA and explicit attention agree; masks are lazy; left padding equals running alone."""

from __future__ import annotations

import pytest
import torch

import lens
from lens.components import attention as attention_module
from tests.conftest import tiny_cfg, tiny_model

FAMILIES = ["gpt2", "llama", "mistral", "neox", "attn_only"]


def _count_sdpa(monkeypatch):
    calls = []
    real = attention_module.F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("is_causal", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_and_explicit_paths_agree_on_every_hook(family, monkeypatch):
    model = tiny_model(family)
    tokens = torch.randint(0, 97, (2, 11))
    calls = _count_sdpa(monkeypatch)
    not_pattern = lambda n: not n.endswith(("hook_pattern", "hook_attn_scores"))  # noqa: E731
    with torch.no_grad():
        fused_logits, fused = model.run_with_cache(tokens, names_filter=not_pattern)
        assert len(calls) == model.cfg.n_layers, "unhooked attention must take the SDPA path"
        explicit_logits, explicit = model.run_with_cache(tokens)
        assert len(calls) == model.cfg.n_layers, "hooked pattern must take the explicit path"
    torch.testing.assert_close(fused_logits, explicit_logits, atol=1e-5, rtol=0)
    assert set(fused.keys()) == {k for k in explicit.keys() if not_pattern(k)}
    for name in fused.keys():
        torch.testing.assert_close(fused[name], explicit[name], atol=1e-5, rtol=0, msg=name)


def test_plain_causal_uses_is_causal_without_a_mask(monkeypatch):
    model = tiny_model("llama")
    calls = _count_sdpa(monkeypatch)
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 9)))
    assert calls == [True, True]


def test_sliding_window_pattern_is_zero_outside_window():
    model = tiny_model("mistral")  # window 5
    _, cache = model.run_with_cache(torch.randint(0, 97, (1, 12)), names_filter=lambda n: "pattern" in n)
    pattern = cache["pattern", 1][0]
    q = torch.arange(12)[:, None]
    k = torch.arange(12)[None, :]
    outside = (k > q) | (q - k >= 5)
    assert pattern[:, outside].abs().max() == 0
    assert (pattern[:, ~outside] > 0).all()


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral", "neox"])
@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "explicit"])
def test_left_padding_matches_rows_run_alone(family, explicit):
    model = tiny_model(family)
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(0, 96, (n,), generator=g) for n in (10, 4, 7)]
    width = max(len(r) for r in rows)
    pad = 96
    tokens = torch.full((3, width), pad)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    hooks = [("blocks.0.attn.hook_pattern", lambda x, hook: None)] if explicit else []
    with torch.no_grad():
        batched = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks)
        assert torch.isfinite(batched).all()
        for i, r in enumerate(rows):
            alone = model(r[None])
            torch.testing.assert_close(batched[i, width - len(r) :], alone[0], atol=1e-4, rtol=0)


def test_padded_loss_ignores_padding():
    model = tiny_model("llama")
    row = torch.randint(0, 96, (6,))
    tokens = torch.cat([torch.full((3,), 96), row])[None]
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        padded = model(tokens, attention_mask=mask, return_type="loss")
        alone = model(row[None], return_type="loss")
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def _buffer_bytes(model):
    return sum(b.numel() * b.element_size() for b in model.buffers())


@pytest.mark.parametrize("family", ["llama", "mistral", "neox", "gpt2"])
def test_nothing_is_sized_by_n_ctx(family):
    small = lens.HookedTransformer(tiny_cfg(family, n_ctx=2048), init=False)
    large = lens.HookedTransformer(tiny_cfg(family, n_ctx=32768), init=False)
    assert _buffer_bytes(small) == _buffer_bytes(large)
    small_params = {n: p.shape for n, p in small.named_parameters()}
    large_params = {n: p.shape for n, p in large.named_parameters()}
    differing = {n for n in small_params if small_params[n] != large_params[n]}
    # Only a learned position table (trained weights, not a mask) follows the context size.
    assert differing <= {"pos_embed.weight"}
    if family != "gpt2":
        assert not differing


def test_long_context_forward_memory_is_linear_without_pattern_hooks(monkeypatch):
    """4096 tokens through the fused path never builds a 4096 x 4096 tensor."""
    model = tiny_model("llama", n_ctx=4096)
    biggest = []
    real = attention_module.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        biggest.append(0 if attn_mask is None else attn_mask.numel())
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 4096)))
    assert biggest == [0, 0]


@pytest.mark.parametrize("padded", [False, True])
def test_chunked_sliding_window_path_is_exact(monkeypatch, padded):
    """Long sequences with a window take the chunked path; it equals the full-mask explicit path."""
    model = tiny_model("mistral", window_size=5)
    monkeypatch.setattr(attention_module.Attention, "window_chunk", 3)
    calls = []
    real = attention_module.Attention._windowed_attention

    def spy(self, *args):
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(attention_module.Attention, "_windowed_attention", spy)
    tokens = torch.randint(0, 97, (2, 17))
    mask = torch.ones(2, 17, dtype=torch.long)
    if padded:
        mask[1, :4] = 0
    with torch.no_grad():
        fused = model(tokens, attention_mask=mask)
        assert len(calls) == model.cfg.n_layers
        explicit = model.run_with_hooks(
            tokens, attention_mask=mask, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: None)]
        )
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
