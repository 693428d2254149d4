"""``use_qk_norm``: a per-head RMSNorm on queries and keys between ``hook_q``/``hook_k`` and rotary (Qwen3).

Oracles: the norm written out on the cached projections, Hugging Face's Qwen3 on the same weights (the
family parity tests), and a property (the attention pattern is invariant to scaling W_Q / W_K per head).
"""

from __future__ import annotations

import pytest
import torch

from lens.processing import ProcessingFlags
from tests.tiny import tiny_model

TOKENS = torch.tensor([[5, 9, 14, 3, 40, 7], [7, 7, 21, 30, 2, 11]])


@pytest.fixture
def model():
    m = tiny_model("llama", use_qk_norm=True)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for block in m.blocks:
            block.attn.q_norm.w.copy_(1 + 0.3 * torch.randn(block.attn.q_norm.w.shape, generator=g))
            block.attn.k_norm.w.copy_(1 + 0.3 * torch.randn(block.attn.k_norm.w.shape, generator=g))
    return m


def rms(x, w, eps):
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w


def test_norms_sit_between_the_projection_hooks_and_rotary(model):
    _, cache = model.run_with_cache(TOKENS)
    attn, eps = model.blocks[1].attn, model.cfg.eps
    q, k = cache["q", 1], cache["k", 1]
    assert q.shape == (2, 6, 4, 8) and k.shape == (2, 6, 2, 8)
    q_n, k_n = cache["blocks.1.attn.q_norm.hook_normalized"], cache["blocks.1.attn.k_norm.hook_normalized"]
    torch.testing.assert_close(q_n, rms(q, attn.q_norm.w, eps), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(k_n, rms(k, attn.k_norm.w, eps), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        cache["blocks.1.attn.q_norm.hook_scale"], (q.pow(2).mean(-1, keepdim=True) + eps).sqrt(), atol=1e-6, rtol=1e-5
    )
    # rotary is applied to the normalised queries: equal norms per rotated pair, so equal per-head norms
    torch.testing.assert_close(cache["rot_q", 1].norm(dim=-1), q_n.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_pattern_is_invariant_to_rescaling_query_and_key_heads():
    model = tiny_model("llama", use_qk_norm=True, eps=1e-12)  # eps out of the way: the norm is exactly scale-free
    _, before = model.run_with_cache(TOKENS)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.mul_(3.0)  # views share storage with qkv_weight
            block.attn.W_K.mul_(0.25)
    _, after = model.run_with_cache(TOKENS)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(after["pattern", layer], before["pattern", layer], atol=1e-5, rtol=1e-4)


def test_editing_the_normalised_query_changes_the_pattern(model):
    _, clean = model.run_with_cache(TOKENS)
    with model.hooks(fwd_hooks=[("blocks.0.attn.q_norm.hook_normalized", lambda x, hook: x * 0.0)]):
        _, edited = model.run_with_cache(TOKENS)
    uniform = torch.ones(6, 6).tril() / torch.arange(1, 7)[:, None]  # zero queries attend uniformly
    torch.testing.assert_close(edited["pattern", 0][0, 0], uniform, atol=1e-6, rtol=0)
    assert not torch.allclose(clean["pattern", 0], edited["pattern", 0])


def test_refactoring_the_factored_matrices_is_refused():
    cfg = tiny_model("gpt2", use_qk_norm=True).cfg  # learned positions, so only the q/k norm forbids it
    with pytest.raises(ValueError, match="use_qk_norm=True"):
        ProcessingFlags(refactor_factored_attn_matrices=True).check(cfg)
