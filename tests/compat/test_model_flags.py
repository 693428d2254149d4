"""Model flags toggled after construction (``set_use_*``, ``set_ungroup_grouped_query_attention``), ``hook_tokens``
and ``input_to_embed``, as TransformerLens.

Oracles: a model *constructed* with the flag (same weights) for every toggle — same hook names, same cached
values, same logits; exact relations (ungrouped keys are the grouped ones repeated; ``input_to_embed`` fed back
through ``start_at_layer=0`` gives the forward's logits); and, optionally, TransformerLens 2.x on identical
weights toggled by its own setters.
"""

from __future__ import annotations

import pytest
import torch

import lens
from lens.generation import KVCache
from lens.tokenizer import Tokenizer
from tests.tiny import tiny_model

TOKENS = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(0))
SETTERS = {
    "set_use_attn_result": "use_attn_result",
    "set_use_split_qkv_input": "use_split_qkv_input",
    "set_use_hook_mlp_in": "use_hook_mlp_in",
    "set_use_attn_in": "use_attn_in",
    "set_use_hook_tokens": "use_hook_tokens",
    "set_ungroup_grouped_query_attention": "ungroup_grouped_query_attention",
}
FAMILIES = ("gpt2", "llama", "neox", "attn_only")


def _cached(model, tokens=TOKENS):
    _, cache = model.run_with_cache(tokens)
    return {k: v for k, v in cache.items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("setter", list(SETTERS))
def test_toggle_equals_construction_with_the_flag(family, setter):
    flag = SETTERS[setter]
    if family == "attn_only" and flag == "use_hook_mlp_in":
        pytest.skip("attention-only: refused, see test_hook_mlp_in_refused_without_mlp")
    model = tiny_model(family)
    clean_names, clean_logits = list(model.hook_dict), model(TOKENS)
    built = lens.HookedTransformer(model.cfg.replace(**{flag: True}), init=False)
    built.load_state_dict(model.state_dict())

    getattr(model, setter)(True)
    assert getattr(model.cfg, flag) is True
    assert all(m.cfg is model.cfg for m in model.modules() if hasattr(m, "cfg"))  # one config, in sync
    assert list(model.hook_dict) == list(built.hook_dict)
    toggled, constructed = _cached(model), _cached(built)
    assert list(toggled) == list(constructed)
    for name in toggled:
        torch.testing.assert_close(toggled[name], constructed[name], atol=0, rtol=0)
    torch.testing.assert_close(model(TOKENS), clean_logits, atol=1e-5, rtol=1e-5)  # hooks only, same numbers

    getattr(model, setter)(False)
    assert getattr(model.cfg, flag) is False
    assert list(model.hook_dict) == clean_names
    assert sorted(_cached(model)) == sorted(n for n in clean_names if n != "hook_tokens")


def test_toggle_creates_exactly_the_named_hook_points():
    model = tiny_model("gpt2")
    added = {}
    for setter in ("set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in", "set_use_attn_in"):
        before = set(model.hook_dict)
        getattr(model, setter)(True)
        added[setter] = sorted(set(model.hook_dict) - before)
    model.set_use_hook_tokens(True)
    assert added == {
        "set_use_attn_result": ["blocks.0.attn.hook_result", "blocks.1.attn.hook_result"],
        "set_use_split_qkv_input": [f"blocks.{i}.hook_{x}_input" for i in (0, 1) for x in "kqv"],
        "set_use_hook_mlp_in": ["blocks.0.hook_mlp_in", "blocks.1.hook_mlp_in"],
        "set_use_attn_in": ["blocks.0.hook_attn_in", "blocks.1.hook_attn_in"],
    }
    assert "hook_tokens" in model.hook_dict
    assert model.blocks[0].attn.hook_result.name == "blocks.0.attn.hook_result"


def test_toggle_leaves_a_shared_config_alone():
    model = tiny_model("gpt2")
    cfg = model.cfg
    other = lens.HookedTransformer(cfg, init=False)
    other.load_state_dict(model.state_dict())
    model.set_use_attn_result(True)
    assert cfg.use_attn_result is False and other.cfg is cfg
    torch.testing.assert_close(other(TOKENS), model(TOKENS), atol=1e-5, rtol=1e-5)  # the other model still runs


def test_hook_removed_with_its_point_and_setter_errors():
    model = tiny_model("gpt2")
    model.set_use_attn_result(True)
    model.add_hook("blocks.0.attn.hook_result", lambda x, hook: x * 0)
    model.set_use_attn_result(False)
    model.set_use_attn_result(True)
    torch.testing.assert_close(model(TOKENS), tiny_model("gpt2")(TOKENS), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="use_attn_result must be a bool"):
        model.set_use_attn_result(1)
    with pytest.raises(ValueError, match="not a valid hook name|hook_mlp_in"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_mlp_in", lambda x, hook: None)])


def test_hook_mlp_in_refused_without_mlp():
    model = tiny_model("attn_only")
    with pytest.raises(ValueError, match="attention-only"):
        model.set_use_hook_mlp_in(True)
    assert model.cfg.use_hook_mlp_in is False


# -- hook_tokens ----------------------------------------------------------------------------------------
def test_hook_tokens_sees_and_replaces_the_ids():
    model = tiny_model("gpt2", use_hook_tokens=True)
    seen = []
    model.run_with_hooks(TOKENS, fwd_hooks=[("hook_tokens", lambda t, hook: seen.append(t.clone()))])
    assert torch.equal(seen[0], TOKENS)
    other = (TOKENS + 1) % 97
    logits, loss = model.run_with_hooks(TOKENS, return_type="both", fwd_hooks=[("hook_tokens", lambda t, hook: other)])
    ref_logits, ref_loss = model(other, return_type="both")
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(loss, ref_loss)  # the loss targets are the replaced ids, as TransformerLens
    _, cache = model.run_with_cache(TOKENS)
    assert torch.equal(cache["hook_tokens"], TOKENS)


# -- ungrouped grouped-query attention ----------------------------------------------------------------
def test_ungrouped_keys_are_the_grouped_ones_repeated():
    model = tiny_model("llama")  # 4 query heads, 2 key/value heads
    n_rep = model.cfg.n_heads // model.cfg.n_key_value_heads
    grouped, logits = _cached(model), model(TOKENS)
    model.set_ungroup_grouped_query_attention(True)
    ungrouped = _cached(model)
    for name in ("hook_k", "hook_v", "hook_rot_k"):
        key = f"blocks.1.attn.{name}"
        assert ungrouped[key].shape[2] == model.cfg.n_heads
        torch.testing.assert_close(ungrouped[key], grouped[key].repeat_interleave(n_rep, dim=2), atol=0, rtol=0)
    torch.testing.assert_close(ungrouped["blocks.1.attn.hook_pattern"], grouped["blocks.1.attn.hook_pattern"])
    torch.testing.assert_close(model(TOKENS), logits, atol=1e-5, rtol=1e-5)


def test_ungrouped_value_edit_reaches_one_query_head_only():
    model = tiny_model("llama")
    model.set_ungroup_grouped_query_attention(True)
    _, clean = model.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_z")

    def zero_head(v, hook):
        v[:, :, 1] = 0.0

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_v", zero_head)]):
        _, edited = model.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_z")
    z, z0 = edited["blocks.0.attn.hook_z"], clean["blocks.0.attn.hook_z"]
    assert torch.count_nonzero(z[:, :, 1]) == 0
    torch.testing.assert_close(z[:, :, 0], z0[:, :, 0])  # head 0 shares key/value head 0 with head 1, untouched


def test_ungrouped_split_qkv_input_and_generation():
    model = tiny_model("llama")
    ref_logits = model(TOKENS)
    ref_tokens = model.generate(TOKENS[:1], max_new_tokens=5, stop_at_eos=False, verbose=False)
    model.set_ungroup_grouped_query_attention(True)
    model.set_use_split_qkv_input(True)
    _, cache = model.run_with_cache(TOKENS)
    assert cache["blocks.0.hook_k_input"].shape[2] == model.cfg.n_heads
    torch.testing.assert_close(model(TOKENS), ref_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(
        model.generate(TOKENS[:1], max_new_tokens=5, stop_at_eos=False, verbose=False), ref_tokens
    )  # KV cache too
    assert KVCache.for_model(model, 1, 8).layers[0].k.shape[1] == model.cfg.n_heads


# -- input_to_embed -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ("gpt2", "llama"))
def test_input_to_embed_is_the_forward_s_first_step(family):
    model = tiny_model(family, use_hook_tokens=True)
    residual, tokens, shortformer, mask = model.input_to_embed(TOKENS)
    assert torch.equal(tokens, TOKENS) and shortformer is None and mask is None
    _, cache = model.run_with_cache(TOKENS, names_filter=["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(residual, cache["blocks.0.hook_resid_pre"], atol=0, rtol=0)
    torch.testing.assert_close(model(residual, start_at_layer=0, tokens=tokens), model(TOKENS), atol=0, rtol=0)
    residual_1d, tokens_1d, _, _ = model.input_to_embed(TOKENS[0])
    assert tokens_1d.shape == (1, TOKENS.shape[1])
    torch.testing.assert_close(residual_1d, residual[:1])


def test_input_to_embed_strings_padding_and_kv_cache():
    model = lens.HookedTransformer(
        dict(n_layers=1, d_model=32, n_heads=4, d_vocab=259, n_ctx=32, default_padding_side="left"),
        tokenizer=Tokenizer.byte_level(),
    )
    residual, tokens, _, mask = model.input_to_embed(["ab", "abcd"])
    assert tokens.shape == mask.shape == (2, 5) and mask[0].tolist() == [0, 0, 1, 1, 1]
    forward = model(["ab", "abcd"])
    torch.testing.assert_close(model(residual, start_at_layer=0, attention_mask=mask), forward, atol=0, rtol=0)
    cache = KVCache.for_model(model, batch=1, max_len=16)
    model(tokens[1:, :3], past_kv_cache=cache)
    res_new, _, _, full_mask = model.input_to_embed(tokens[1:, 3:], past_kv_cache=cache)
    assert full_mask is None  # no padding anywhere
    _, ref = model.run_with_cache(tokens[1:], names_filter=["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(res_new, ref["blocks.0.hook_resid_pre"][:, 3:])  # positions continue the cache


# -- TransformerLens as the oracle ---------------------------------------------------------------------
def test_setters_match_transformer_lens():
    pytest.importorskip("transformer_lens", reason="TransformerLens is an optional oracle (install it to compare)")
    from tests.compat._tl import tl_and_lens, tokens_for

    for family in ("gpt2", "llama"):
        tl_model, model = tl_and_lens(family)
        tokens = tokens_for(model)
        setters = ["set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in"]
        if family == "llama":
            setters.append("set_ungroup_grouped_query_attention")
        for setter in setters:
            getattr(tl_model, setter)(True)
            getattr(model, setter)(True)
        _, tl_cache = tl_model.run_with_cache(tokens)
        _, cache = model.run_with_cache(tokens)
        for name in cache.keys():
            if name.endswith("hook_normalized") and family == "llama":
                continue  # RMSNorm hook_normalized: before (TL) / after (lens) the weight, see test_tl_oracle
            torch.testing.assert_close(cache[name], tl_cache[name], atol=1e-4, rtol=1e-4, msg=name)
        assert set(cache.keys()) <= set(tl_cache.keys())
        residual, toks, short, mask = model.input_to_embed(tokens)
        tl_residual, tl_toks, tl_short, tl_mask = tl_model.input_to_embed(tokens)
        torch.testing.assert_close(residual, tl_residual, atol=1e-5, rtol=1e-5)
        assert torch.equal(toks, tl_toks) and short is None and tl_short is None and mask is None and tl_mask is None
        torch.testing.assert_close(model(tokens), tl_model(tokens), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("flag", ["use_attn_result", "use_split_qkv_input", "use_attn_in"])
def test_flag_assigned_on_the_config_of_a_built_model_names_the_setter(flag):
    model = tiny_model("gpt2")
    setattr(model.cfg, flag, True)  # TransformerLens-era habit; lens builds hook points at construction
    with pytest.raises(ValueError, match=f"call model.set_{flag}\\(True\\)"):
        model(TOKENS)
    setattr(model.cfg, flag, False)
    getattr(model, f"set_{flag}")(True)
    torch.testing.assert_close(model(TOKENS), tiny_model("gpt2")(TOKENS), atol=1e-5, rtol=1e-5)
