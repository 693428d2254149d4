"""TransformerLens's hook-management API on lens: ``HookPoint.layer()``, ``fwd_hooks``/``bwd_hooks``,
``add_perma_hook``, ``remove_all_hook_fns``, ``reset_hooks(clear_contexts, direction, including_permanent,
level)``, ``check_hooks_to_add``, ``add_caching_hooks``, ``cache_all``/``cache_some``, ``hook_points()``, ``mod_dict``.

Properties are checked on lens alone; the optional oracle test runs the same sequence of calls on
TransformerLens 2.x with identical weights and compares what a notebook would read (hook counts, layers, logits).
"""

from __future__ import annotations

import functools

import pytest
import torch

import lens
from tests.tiny import tiny_model

TOKENS = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model():
    m = tiny_model("gpt2")
    yield m
    m.reset_hooks(including_permanent=True)


def _double(x, hook):
    return x * 2


# -- HookPoint ----------------------------------------------------------------------------------------
def test_layer_is_the_block_index_of_every_block_hook(model):
    for name, hp in model.hook_dict.items():
        parts = name.split(".")
        if parts[0] == "blocks":
            assert hp.layer() == int(parts[1])
        else:
            with pytest.raises(ValueError, match="not inside a block"):
                hp.layer()
    with pytest.raises(ValueError, match="None"):
        lens.HookPoint().layer()


def test_fwd_hooks_and_bwd_hooks_list_handles_that_remove(model):
    hp = model.hook_dict["blocks.0.hook_resid_pre"]
    assert hp.fwd_hooks == [] and hp.bwd_hooks == []
    model.add_hook("blocks.0.hook_resid_pre", _double)
    model.add_hook("blocks.0.hook_resid_pre", lambda g, hook: None, dir="bwd")
    model.add_perma_hook("blocks.0.hook_resid_pre", lambda x, hook: None)
    assert len(hp.fwd_hooks) == 2 and len(hp.bwd_hooks) == 1
    assert [h.is_permanent for h in hp.fwd_hooks] == [False, True]
    assert all(h.context_level is None for h in hp.fwd_hooks)
    for handle in hp.fwd_hooks:  # TransformerLens's idiom: handle.hook.remove()
        handle.hook.remove()
    assert hp.fwd_hooks == [] and len(hp.bwd_hooks) == 1
    torch.testing.assert_close(model(TOKENS), tiny_model("gpt2")(TOKENS))  # removed means it no longer fires


def test_call_hooks_are_listed_while_the_call_runs(model):
    seen = []

    def count(x, hook):
        seen.append(len(hook.fwd_hooks))

    model.run_with_hooks(TOKENS, fwd_hooks=[("hook_embed", count)])
    assert seen == [1] and model.hook_dict["hook_embed"].fwd_hooks == []


# -- adding and removing --------------------------------------------------------------------------------
def test_add_perma_hook_survives_reset_hooks(model):
    clean = model(TOKENS)
    edited = model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_resid_pre", _double)])
    model.add_perma_hook("blocks.1.hook_resid_pre", _double)
    torch.testing.assert_close(model(TOKENS), edited)
    model.reset_hooks()
    torch.testing.assert_close(model(TOKENS), edited)
    model.reset_hooks(including_permanent=True)
    torch.testing.assert_close(model(TOKENS), clean)


def test_hookpoint_add_perma_hook(model):
    hp = model.hook_dict["hook_embed"]
    hp.add_perma_hook(_double)
    model.reset_hooks()
    assert [h.is_permanent for h in hp.fwd_hooks] == [True]


def test_remove_all_hook_fns_by_direction_and_level(model):
    hp = model.hook_dict["blocks.0.hook_resid_post"]
    model.add_hook(hp.name, _double)
    model.add_hook(hp.name, lambda g, hook: None, dir="bwd")
    model.remove_all_hook_fns(direction="fwd")
    assert (len(hp.fwd_hooks), len(hp.bwd_hooks)) == (0, 1)
    model.remove_all_hook_fns("bwd")
    assert hp.bwd_hooks == []
    model.add_hook(hp.name, _double, level=1)
    model.add_hook(hp.name, _double, level=2)
    model.remove_all_hook_fns(level=1)
    assert [h.context_level for h in hp.fwd_hooks] == [2]
    model.add_perma_hook(hp.name, _double)
    model.remove_all_hook_fns()
    assert [h.is_permanent for h in hp.fwd_hooks] == [True]
    model.remove_all_hook_fns(including_permanent=True)
    assert hp.fwd_hooks == []
    with pytest.raises(ValueError, match="direction"):
        model.remove_all_hook_fns(direction="forward")


def test_reset_hooks_signature_and_contexts(model):
    hp = model.hook_dict["hook_embed"]
    hp.ctx["seen"] = 1
    model.add_hook("hook_embed", _double)
    model.add_hook("hook_embed", lambda g, hook: None, dir="bwd")
    model.reset_hooks(clear_contexts=False, direction="bwd")
    assert hp.ctx == {"seen": 1} and len(hp.fwd_hooks) == 1 and hp.bwd_hooks == []
    model.reset_hooks()  # TransformerLens's default clears the contexts
    assert hp.ctx == {} and hp.fwd_hooks == []
    hp.ctx["x"] = 2
    model.clear_contexts()
    assert hp.ctx == {}
    with pytest.raises(TypeError, match="clear_contexts"):
        model.reset_hooks("fwd")


def test_check_hooks_to_add_can_refuse_every_way_of_adding():
    class NoEmbedHooks(lens.HookedTransformer):
        def check_hooks_to_add(self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False, prepend=False):
            if hook_point_name == "hook_embed":
                raise ValueError(f"no hooks on {hook_point_name}")

    model = NoEmbedHooks(tiny_model("gpt2").cfg)
    with pytest.raises(ValueError, match="no hooks on hook_embed"):
        model.add_hook("hook_embed", _double)
    with pytest.raises(ValueError, match="no hooks on hook_embed"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_pre", _double), ("hook_embed", _double)])
    with pytest.raises(ValueError, match="no hooks on hook_embed"):
        model.add_perma_hook(lambda name: name.endswith("embed"), _double)
    assert not any(hp.fwd_hooks for hp in model.hook_points())  # nothing left half-added by the refused calls
    model.add_hook("hook_pos_embed", _double)  # others still allowed


# -- caching helpers ---------------------------------------------------------------------------------------
def test_add_caching_hooks_fills_on_plain_forwards(model):
    assert model.is_caching is False
    cache = model.add_caching_hooks(lambda n: n.endswith("hook_resid_post"))
    assert model.is_caching is True
    model(TOKENS)
    _, ref = model.run_with_cache(TOKENS, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert sorted(cache) == sorted(ref.keys())
    for name in cache:
        torch.testing.assert_close(cache[name], ref[name])
    model.reset_hooks()
    assert model.is_caching is False
    before = {k: v.clone() for k, v in cache.items()}
    model(TOKENS * 0)
    for name in cache:  # hooks gone: a later forward does not write
        torch.testing.assert_close(cache[name], before[name])


def test_get_caching_hooks_positional_signature(model):
    store: dict = {}
    cache, fwd, bwd = model.get_caching_hooks("hook_embed", True, None, False, store)  # TL's positional order
    assert cache is store and [n for n, _ in fwd] == ["hook_embed"] and [n for n, _ in bwd] == ["hook_embed"]
    with model.hooks(fwd, bwd):
        model(TOKENS, return_type="loss").backward()
    assert set(store) == {"hook_embed", "hook_embed_grad"}
    model.zero_grad(set_to_none=True)


def test_cache_all_and_cache_some_are_deprecated_but_work(model):
    store: dict = {}
    with pytest.warns(DeprecationWarning, match="cache_all"):
        model.cache_all(store)
    model(TOKENS)
    assert set(store) == set(model.hook_dict)
    model.reset_hooks()
    some: dict = {}
    with pytest.warns(DeprecationWarning, match="cache_some"):
        model.cache_some(some, lambda n: "pattern" in n)
    model(TOKENS)
    assert set(some) == {n for n in model.hook_dict if "pattern" in n}


def test_hook_points_and_mod_dict(model):
    assert model.hook_points() == list(model.hook_dict.values())
    assert model.mod_dict["blocks.0.attn"] is model.blocks[0].attn
    assert all(model.mod_dict[name] is hp for name, hp in model.hook_dict.items())


# -- TransformerLens as the oracle ---------------------------------------------------------------------------
def test_same_calls_same_observations_as_transformer_lens():
    pytest.importorskip("transformer_lens", reason="TransformerLens is an optional oracle (install it to compare)")
    from tests.compat._tl import tl_and_lens_gpt2, tokens_for

    tl_model, model = tl_and_lens_gpt2()
    tokens = tokens_for(model)
    for name in model.hook_dict:  # layer() agrees wherever TransformerLens gives one
        if name.startswith("blocks."):
            assert model.hook_dict[name].layer() == tl_model.hook_dict[name].layer()
    observed = {"tl": [], "lens": []}
    for key, m in (("tl", tl_model), ("lens", model)):
        hp = m.hook_dict["blocks.1.hook_resid_pre"]
        m.add_perma_hook("blocks.1.hook_resid_pre", _double)
        m.add_hook("blocks.1.hook_resid_pre", functools.partial(lambda x, hook, s: x + s, s=0.25))
        m.add_hook("blocks.1.hook_resid_pre", lambda g, hook: None, dir="bwd")
        observed[key].append((len(hp.fwd_hooks), len(hp.bwd_hooks), [h.is_permanent for h in hp.fwd_hooks]))
        observed[key].append(m(tokens).detach())
        m.remove_all_hook_fns(direction="bwd")
        observed[key].append((len(hp.fwd_hooks), len(hp.bwd_hooks)))
        m.reset_hooks()
        observed[key].append((len(hp.fwd_hooks), len(hp.bwd_hooks)))
        observed[key].append(m(tokens).detach())
        for handle in hp.fwd_hooks:
            handle.hook.remove()
        observed[key].append(m(tokens).detach())
        m.reset_hooks(including_permanent=True)
    for tl_item, lens_item in zip(observed["tl"], observed["lens"], strict=True):
        if isinstance(tl_item, torch.Tensor):
            torch.testing.assert_close(lens_item, tl_item, atol=1e-4, rtol=1e-4)
        else:
            assert lens_item == tl_item


@pytest.mark.parametrize("pos_slice", [-1, (1, 4), [0, 2]])
def test_run_with_cache_pos_slice_keeps_those_positions(pos_slice):
    model = tiny_model("llama", use_attn_result=True, use_split_qkv_input=True)
    _, full = model.run_with_cache(TOKENS)
    _, part = model.run_with_cache(TOKENS, pos_slice=pos_slice)
    index = {-1: [-1], (1, 4): slice(1, 4)}.get(pos_slice if not isinstance(pos_slice, list) else None, pos_slice)
    assert set(part.keys()) == set(full.keys())
    for name in full.keys():
        t = full[name]
        query_pos = name.endswith(("hook_pattern", "hook_attn_scores"))
        want = t[..., index, :] if query_pos else t[:, index]
        torch.testing.assert_close(part[name], want, atol=0, rtol=0, msg=name)
    with pytest.raises(ValueError, match="Invalid input_slice"):
        model.run_with_cache(TOKENS, pos_slice="last")
    _, dropped = model.run_with_cache(TOKENS, names_filter="hook_embed", pos_slice=lens.utils.Slice(-1))
    torch.testing.assert_close(dropped["hook_embed"], full["hook_embed"][:, -1])  # a Slice(int) drops the dim


def test_pos_slice_matches_transformer_lens():
    pytest.importorskip("transformer_lens", reason="TransformerLens is an optional oracle (install it to compare)")
    from tests.compat._tl import tl_and_lens_gpt2, tokens_for

    tl_model, model = tl_and_lens_gpt2()
    tokens = tokens_for(model)
    _, tl_cache = tl_model.run_with_cache(tokens, pos_slice=-1)
    _, cache = model.run_with_cache(tokens, pos_slice=-1)
    for name in cache.keys():
        torch.testing.assert_close(cache[name], tl_cache[name], atol=1e-4, rtol=1e-4, msg=name)


def test_hooks_context_clear_contexts(model):
    def remember(x, hook):
        hook.ctx["seen"] = True

    with model.hooks(fwd_hooks=[("hook_embed", remember)]):
        model(TOKENS)
    assert model.hook_dict["hook_embed"].ctx == {"seen": True}  # kept by default
    with model.hooks(fwd_hooks=[("hook_embed", remember)], clear_contexts=True):
        model(TOKENS)
        assert model.hook_dict["hook_embed"].ctx == {"seen": True}
    assert model.hook_dict["hook_embed"].ctx == {}
