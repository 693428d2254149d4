"""``qk_norm_scope="projection"``: one RMSNorm over the whole query / key projection (OLMo-2), not one per head.

Oracles: the norm written out on the cached projections (``hook_q`` / ``hook_k`` see them before it), Hugging
Face's OLMo-2 on the same weights, and the per-head scope (Qwen3's ``use_qk_norm``) on the same weights, which
must give different numbers: a per-head model does not load an OLMo-2 checkpoint with equal logits.
"""

from __future__ import annotations

import pytest
import torch

import lens
from lens.loading import from_hf_model
from tests.tiny import hf_model, hf_tokens, tiny_model

TOKENS = torch.tensor([[5, 9, 14, 3, 40, 7], [7, 7, 21, 30, 2, 11]])


def rms(x, w, eps):
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w


def projection_model(**overrides):
    m = tiny_model("llama", use_qk_norm=True, qk_norm_scope="projection", **overrides)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for block in m.blocks:
            block.attn.q_norm.w.copy_(1 + 0.3 * torch.randn(block.attn.q_norm.w.shape, generator=g))
            block.attn.k_norm.w.copy_(1 + 0.3 * torch.randn(block.attn.k_norm.w.shape, generator=g))
            # heads of very different sizes, so one scale per position differs from one per head
            block.attn.W_Q[0].mul_(4.0)
            block.attn.W_K[1].mul_(0.25)
    return m


@pytest.fixture
def model():
    return projection_model()


def test_norm_weights_cover_the_whole_projection(model):
    cfg, attn = model.cfg, model.blocks[0].attn
    assert attn.q_norm.w.shape == (cfg.n_heads * cfg.d_head,)  # 4 * 8
    assert attn.k_norm.w.shape == (cfg.n_key_value_heads * cfg.d_head,)  # 2 * 8
    per_head = tiny_model("llama", use_qk_norm=True).blocks[0].attn
    assert per_head.q_norm.w.shape == per_head.k_norm.w.shape == (cfg.d_head,)


def test_hook_normalized_is_rmsnorm_over_the_flattened_projection(model):
    _, cache = model.run_with_cache(TOKENS)
    attn, eps = model.blocks[1].attn, model.cfg.eps
    q, k = cache["q", 1], cache["k", 1]  # before the norm, per head
    assert q.shape == (2, 6, 4, 8) and k.shape == (2, 6, 2, 8)
    q_n, k_n = cache["blocks.1.attn.q_norm.hook_normalized"], cache["blocks.1.attn.k_norm.hook_normalized"]
    assert q_n.shape == (2, 6, 32) and k_n.shape == (2, 6, 16)
    torch.testing.assert_close(q_n, rms(q.flatten(2), attn.q_norm.w, eps), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(k_n, rms(k.flatten(2), attn.k_norm.w, eps), atol=1e-6, rtol=1e-5)
    scale = cache["blocks.1.attn.q_norm.hook_scale"]
    assert scale.shape == (2, 6, 1)  # one scale per position, shared by every head
    torch.testing.assert_close(scale, (q.flatten(2).pow(2).mean(-1, keepdim=True) + eps).sqrt(), atol=1e-6, rtol=1e-5)
    # rotary rotates the normalised projection split back into heads (rotation keeps each head's norm)
    torch.testing.assert_close(
        cache["rot_q", 1].norm(dim=-1), q_n.unflatten(-1, (4, 8)).norm(dim=-1), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        cache["rot_k", 1].norm(dim=-1), k_n.unflatten(-1, (2, 8)).norm(dim=-1), atol=1e-5, rtol=1e-5
    )
    # the per-head formula gives other numbers on this model
    per_head = rms(q, attn.q_norm.w.view(4, 8), eps).flatten(2)
    assert (per_head - q_n).abs().max() > 0.1


def test_editing_one_head_rescales_every_head(model):
    """The shared scale couples heads: growing head 0's query shrinks the others' (not so per head)."""

    def grow_head_0(q, hook):
        q[:, :, 0] *= 10.0
        return q

    per_head = tiny_model("llama", use_qk_norm=True)
    for m, coupled in ((model, True), (per_head, False)):
        _, clean = m.run_with_cache(TOKENS)
        with m.hooks(fwd_hooks=[("blocks.0.attn.hook_q", grow_head_0)]):
            _, edited = m.run_with_cache(TOKENS)
        others_before, others_after = clean["rot_q", 0][:, :, 1:], edited["rot_q", 0][:, :, 1:]
        if coupled:
            assert (others_after.norm(dim=-1) < others_before.norm(dim=-1)).all()
        else:
            torch.testing.assert_close(others_after, others_before, atol=1e-6, rtol=0)


def test_hf_olmo2_parity_holds_and_a_per_head_norm_would_not_match():
    hf = hf_model("olmo2")  # grouped-query: 4 query heads over 2 key/value heads
    with torch.no_grad():  # unit norm weights: the per-head variant then differs only by the scope
        for layer in hf.model.layers:
            layer.self_attn.q_norm.weight.fill_(1.0)
            layer.self_attn.k_norm.weight.fill_(1.0)
    toks = hf_tokens()
    with torch.no_grad():
        expected = hf(toks).logits
    model = from_hf_model(hf, model_class=lens.HookedTransformer)
    assert model.cfg.qk_norm_scope == "projection" and model.cfg.use_normalization_after_only
    with torch.no_grad():
        torch.testing.assert_close(model(toks), expected, atol=1e-4, rtol=0)

    per_head = lens.HookedTransformer(model.cfg.replace(qk_norm_scope="head"), init=False).eval()
    state = {k: v for k, v in model.state_dict().items() if ".q_norm." not in k and ".k_norm." not in k}
    missing, unexpected = per_head.load_state_dict(state, strict=False)
    assert not unexpected and all(".q_norm." in k or ".k_norm." in k for k in missing)
    with torch.no_grad():
        for block in per_head.blocks:
            block.attn.q_norm.w.fill_(1.0)
            block.attn.k_norm.w.fill_(1.0)
        assert (per_head(toks) - expected).abs().max() > 1e-2


def test_ungrouped_keys_are_normalised_one_copy_of_the_key_heads_at_a_time(model):
    _, grouped = model.run_with_cache(TOKENS)
    logits = model(TOKENS)
    model.set_ungroup_grouped_query_attention(True)
    _, ungrouped = model.run_with_cache(TOKENS)
    torch.testing.assert_close(model(TOKENS), logits, atol=1e-6, rtol=0)
    k_n = ungrouped["blocks.1.attn.k_norm.hook_normalized"]
    assert k_n.shape == (2, 6, 2, 16)  # [batch, pos, n_heads // n_kv_heads copies, kv_head * d_head]
    for copy in range(2):
        torch.testing.assert_close(k_n[:, :, copy], grouped["blocks.1.attn.k_norm.hook_normalized"], atol=0, rtol=0)
    torch.testing.assert_close(ungrouped["rot_k", 1], grouped["rot_k", 1].repeat_interleave(2, dim=2), atol=0, rtol=0)


def test_split_qkv_inputs_give_the_same_numbers(model):
    logits = model(TOKENS)
    model.set_use_split_qkv_input(True)
    torch.testing.assert_close(model(TOKENS), logits, atol=1e-5, rtol=0)


def test_scope_is_validated():
    with pytest.raises(ValueError, match="'layer'"):
        tiny_model("llama", use_qk_norm=True, qk_norm_scope="layer")
    with pytest.raises(ValueError, match="needs use_qk_norm=True"):
        tiny_model("llama", qk_norm_scope="projection")
    assert tiny_model("llama").cfg.qk_norm_scope == "head"  # the default, Qwen3 / Gemma 3
