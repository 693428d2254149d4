"""Every hook point fires, with TransformerLens's names and shapes, for each family and flag."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model

FAMILIES = ["gpt2", "llama", "mistral", "neox", "attn_only"]
FLAGS = [{}, {"use_attn_result": True}, {"use_split_qkv_input": True}, {"use_attn_in": True}, {"use_hook_mlp_in": True}]


def expected_hooks(cfg) -> dict[str, tuple]:
    """The hook names (and shapes) TransformerLens would have, written from the spec, not the code."""
    b, p, d, h, kv, dh, m, v = 2, 7, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    del v
    out = {"hook_embed": (b, p, d)}
    if cfg.positional == "learned":
        out["hook_pos_embed"] = (b, p, d)
    for i in range(cfg.n_layers):
        L = f"blocks.{i}."
        out[L + "hook_resid_pre"] = (b, p, d)
        ln_shapes = [(b, p)]
        if cfg.use_split_qkv_input:
            out[L + "hook_q_input"] = (b, p, h, d)
            out[L + "hook_k_input"] = (b, p, kv, d)
            out[L + "hook_v_input"] = (b, p, kv, d)
            ln_shapes = [(b, p, kv)]  # ln1 runs on q, k, v inputs; the cache keeps the last (v)
        elif cfg.use_attn_in:
            out[L + "hook_attn_in"] = (b, p, h, d)
            ln_shapes = [(b, p, h)]
        out[L + "ln1.hook_scale"] = (*ln_shapes[0], 1)
        out[L + "ln1.hook_normalized"] = (*ln_shapes[0], d)
        A = L + "attn."
        out[A + "hook_q"] = (b, p, h, dh)
        out[A + "hook_k"] = (b, p, kv, dh)
        out[A + "hook_v"] = (b, p, kv, dh)
        if cfg.positional == "rotary":
            out[A + "hook_rot_q"] = (b, p, h, dh)
            out[A + "hook_rot_k"] = (b, p, kv, dh)
        out[A + "hook_attn_scores"] = (b, h, p, p)
        out[A + "hook_pattern"] = (b, h, p, p)
        out[A + "hook_z"] = (b, p, h, dh)
        if cfg.use_attn_result:
            out[A + "hook_result"] = (b, p, h, d)
        out[L + "hook_attn_out"] = (b, p, d)
        if not cfg.attn_only:
            if not cfg.parallel_attn_mlp:
                out[L + "hook_resid_mid"] = (b, p, d)
            if cfg.use_hook_mlp_in:
                out[L + "hook_mlp_in"] = (b, p, d)
            out[L + "ln2.hook_scale"] = (b, p, 1)
            out[L + "ln2.hook_normalized"] = (b, p, d)
            out[L + "mlp.hook_pre"] = (b, p, m)
            if cfg.gated_mlp:
                out[L + "mlp.hook_pre_linear"] = (b, p, m)
            out[L + "mlp.hook_post"] = (b, p, m)
            out[L + "hook_mlp_out"] = (b, p, d)
        out[L + "hook_resid_post"] = (b, p, d)
    out["ln_final.hook_scale"] = (b, p, 1)
    out["ln_final.hook_normalized"] = (b, p, d)
    return out


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: next(iter(f), "default"))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_hook_fires_with_tl_name_and_shape(family, flags):
    model = tiny_model(family, **flags)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 7))
    expected = expected_hooks(model.cfg)
    assert set(model.hook_dict) == set(expected)
    _, cache = model.run_with_cache(tokens)
    assert set(cache.keys()) == set(expected), "every hook point must fire"
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name


@pytest.mark.parametrize("family", FAMILIES)
def test_flags_do_not_change_logits(family):
    """The optional per-head hook points are views of the same computation."""
    tokens = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        base = tiny_model(family)(tokens)
        for flags in FLAGS[1:]:
            torch.testing.assert_close(tiny_model(family, **flags)(tokens), base, atol=1e-5, rtol=0)


def test_tl_weight_views_share_storage():
    model = tiny_model("llama")
    attn = model.blocks[0].attn
    assert attn.W_Q.shape == (4, 32, 8) and attn.W_K.shape == (2, 32, 8) and attn.W_O.shape == (4, 8, 32)
    q_manual = torch.einsum("bpd,hdk->bphk", torch.ones(1, 1, 32), attn.W_Q)
    _, cache = model.run_with_cache(torch.tensor([[1]]), names_filter="blocks.0.ln1.hook_normalized")
    x = cache["blocks.0.ln1.hook_normalized"]
    _, cache2 = model.run_with_cache(torch.tensor([[1]]), names_filter="blocks.0.attn.hook_q")
    torch.testing.assert_close(cache2["q", 0], torch.einsum("bpd,hdk->bphk", x, attn.W_Q) + attn.b_Q)
    with torch.no_grad():
        attn.W_Q[0] = 0.0
    assert attn.qkv_weight[:8].abs().sum() == 0
    assert q_manual.shape == (1, 1, 4, 8)
