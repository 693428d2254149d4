"""ActivationCache compatibility with TransformerLens 2.x: key shorthand, ``pos_slice=`` with ``Slice`` semantics,
``stack_head_results(incl_remainder=True)``, and ``run_with_cache(return_type=None)``.

Oracles: exact slicing of the unsliced result (a ``pos_slice`` must select exactly what slicing the full
stack selects), exact sums (heads + remainder == the residual stream they decompose), and TransformerLens
itself on identical weights (tests that ``importorskip("transformer_lens")``; run them with
``PYTHONPATH=. .venv-tl/bin/python -m pytest tests/compat/test_cache_compat.py``).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from lens.utils import Slice
from tests.conftest import VOCAB, tiny_model

TL_REASON = "TransformerLens is an optional oracle; install transformer_lens (2.x) in a separate venv to compare"
EXACT = dict(atol=1e-6, rtol=1e-6)
POS_SLICES = [
    None,
    -1,
    0,
    (3,),
    (1, 4),
    (None, None, 2),
    (-3, None),
    slice(2, 5),
    [0, 2, 5],
    range(1, 4),
    torch.tensor([4, 1]),
    np.array([1, 3]),
    np.array([True, False, True, False, False, False, True]),
    Slice((1, 3)),
]


@functools.cache
def _run(family: str):
    model = tiny_model(family, unembed_bias=True)
    tokens = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


# -- key shorthand ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, full",
    [
        ("scale1ln1", "blocks.1.ln1.hook_scale"),
        ("scale0ln2", "blocks.0.ln2.hook_scale"),
        ("normalized1ln2", "blocks.1.ln2.hook_normalized"),
        ("pattern1", "blocks.1.attn.hook_pattern"),
        ("attn0", "blocks.0.attn.hook_pattern"),
        ("attn_scores1", "blocks.1.attn.hook_attn_scores"),
        ("k0", "blocks.0.attn.hook_k"),
        ("z1a", "blocks.1.attn.hook_z"),
        ("pre1", "blocks.1.mlp.hook_pre"),
        ("post0", "blocks.0.mlp.hook_post"),
        ("resid_pre1", "blocks.1.hook_resid_pre"),
        ("mlp_out0", "blocks.0.hook_mlp_out"),
        (("scale", 1, "ln1"), "blocks.1.ln1.hook_scale"),
        (("scale", -1, "ln2"), "blocks.1.ln2.hook_scale"),
        (("normalized", 0, "ln1"), "blocks.0.ln1.hook_normalized"),
        (("normalized", 0, "ln2"), "blocks.0.ln2.hook_normalized"),
        ("scale", "ln_final.hook_scale"),
        ("normalized", "ln_final.hook_normalized"),
    ],
)
def test_cache_key_shorthand(key, full):
    _, _, _, cache = _run("gpt2")
    assert cache[key] is cache[full]
    assert key in cache


def test_shorthand_for_a_missing_layer_names_the_closest_hooks():
    _, _, _, cache = _run("gpt2")
    with pytest.raises(ValueError, match="blocks.9.attn.hook_pattern"):
        cache["pattern9"]
    assert "pattern9" not in cache


# -- pos_slice: Slice semantics on every method ---------------------------------------------------------
def _methods(cache, model):
    calls = {
        "accumulated_resid": dict(incl_mid=True),
        "accumulated_resid_ln": dict(incl_mid=False, apply_ln=True),
        "decompose_resid": {},
        "decompose_resid_ln": dict(layer=1, apply_ln=True),
        "stack_head_results": dict(incl_remainder=True),
        "stack_head_results_ln": dict(layer=1, apply_ln=True),
        "get_full_resid_decomposition": dict(expand_neurons=False),
        "get_full_resid_decomposition_ln": dict(layer=1, apply_ln=True),
    }
    if not model.cfg.attn_only:
        calls["stack_neuron_results"] = dict(layer=1, neuron_slice=[1, 4], incl_remainder=True)
    return {name: (getattr(cache, name.removesuffix("_ln")), kwargs) for name, kwargs in calls.items()}


@pytest.mark.parametrize("family", ["gpt2", "llama", "attn_only"])
@pytest.mark.parametrize("pos_slice", POS_SLICES, ids=repr)
def test_pos_slice_selects_what_slicing_the_full_stack_selects(family, pos_slice):
    model, _, _, cache = _run(family)
    for name, (method, kwargs) in _methods(cache, model).items():
        full = method(**kwargs)
        got = method(pos_slice=pos_slice, **kwargs)
        want = Slice(pos_slice).apply(full, dim=-2)
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, **EXACT, msg=name)


@pytest.mark.parametrize("pos_slice", POS_SLICES, ids=repr)
def test_pos_slice_of_logit_attrs_and_apply_ln_to_stack(pos_slice):
    model, tokens, _, cache = _run("gpt2")
    answer, wrong = tokens[:, 0], tokens[:, 1]
    stack = cache.decompose_resid()
    sliced = cache.decompose_resid(pos_slice=pos_slice)
    want_ln = Slice(pos_slice).apply(cache.apply_ln_to_stack(stack, layer=1), dim=-2)
    torch.testing.assert_close(cache.apply_ln_to_stack(sliced, layer=1, pos_slice=pos_slice), want_ln, **EXACT)
    full_attrs = cache.logit_attrs(stack, answer[:, None], wrong[:, None])  # [component, batch, pos]
    one = Slice(pos_slice).mode == "int"  # [batch] targets for [component, batch, d_model]; else [batch, 1]
    tok, inc = (answer, wrong) if one else (answer[:, None], wrong[:, None])
    got = cache.logit_attrs(sliced, tok, inc, pos_slice=pos_slice)
    torch.testing.assert_close(got, Slice(pos_slice).apply(full_attrs, dim=-1), **EXACT)


def test_batch_slice_and_apply_slice_to_batch_dim():
    model, tokens, _, cache = _run("gpt2")
    stack = cache.decompose_resid()
    for batch_slice in (1, (0, 1), [1, 0], (None, None, 1)):
        sub = cache.apply_slice_to_batch_dim(batch_slice)
        assert sub.has_batch_dim == (Slice(batch_slice).mode != "int")
        want = Slice(batch_slice).apply(cache["resid_post", 1], dim=0)
        torch.testing.assert_close(sub["resid_post", 1], want, **EXACT)
        scaled = cache.apply_ln_to_stack(stack, batch_slice=batch_slice)
        torch.testing.assert_close(scaled, Slice(batch_slice).apply(cache.apply_ln_to_stack(stack), dim=1), **EXACT)
    assert cache.apply_slice_to_batch_dim(None).has_batch_dim
    with pytest.raises(IndexError, match="out of range"):
        cache.apply_slice_to_batch_dim(2)
    with pytest.raises(ValueError, match="no batch dimension"):
        cache.apply_slice_to_batch_dim(0).apply_slice_to_batch_dim(0)


def test_bad_slices_raise_clear_errors():
    _, _, _, cache = _run("gpt2")
    with pytest.raises(IndexError, match="size 7"):
        cache.decompose_resid(pos_slice=7)
    with pytest.raises(IndexError, match="out of range"):
        cache.stack_head_results(pos_slice=[0, 9])
    with pytest.raises(ValueError, match="Invalid input_slice"):
        cache.accumulated_resid(pos_slice="last")
    with pytest.raises(ValueError, match="Invalid input_slice"):
        cache.accumulated_resid(pos_slice=True)
    with pytest.raises(ValueError, match="1 to 3 ints"):
        cache.decompose_resid(pos_slice=(1, 2, 3, 4))


def test_neuron_slice_int_drops_the_neuron_dim_in_get_neuron_results_only():
    model, _, _, cache = _run("gpt2")
    one = cache.get_neuron_results(1, neuron_slice=3, pos_slice=-1)
    assert one.shape == (2, model.cfg.d_model)
    want = cache["post", 1][:, -1, 3, None] * model.blocks[1].mlp.W_out[3]
    torch.testing.assert_close(one, want, **EXACT)
    stacked, labels = cache.stack_neuron_results(layer=2, neuron_slice=3, return_labels=True)
    assert labels == ["L0N3", "L1N3"] and stacked.shape[0] == 2
    torch.testing.assert_close(stacked[1], cache.get_neuron_results(1, neuron_slice=3), **EXACT)


# -- incl_remainder ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama", "neox", "attn_only"])
def test_heads_plus_remainder_sum_to_resid_post_of_the_layer_before(family):
    model, _, _, cache = _run(family)
    n = model.cfg.n_layers
    for layer in range(n + 1):
        for pos_slice in (None, -1, (1, 5)):
            stack, labels = cache.stack_head_results(
                layer, incl_remainder=True, pos_slice=pos_slice, return_labels=True
            )
            assert labels[-1] == "remainder" and len(labels) == layer * model.cfg.n_heads + 1
            target = cache["resid_post", layer - 1] if layer else cache["resid_pre", 0]
            torch.testing.assert_close(stack.sum(0), Slice(pos_slice).apply(target, dim=-2), **EXACT)
            heads_only = cache.stack_head_results(layer, pos_slice=pos_slice)
            torch.testing.assert_close(stack[:-1], heads_only, atol=0, rtol=0)
        if not model.cfg.attn_only and layer:
            neurons = cache.stack_neuron_results(layer, incl_remainder=True, neuron_slice=[0, 2])
            torch.testing.assert_close(neurons.sum(0), cache["resid_post", layer - 1], **EXACT)


def test_remainder_is_measured_against_resid_post_not_a_hooked_resid_pre():
    """TransformerLens's remainder is resid_post[layer - 1] - heads: a hook that edits resid_pre[layer]
    after resid_post[layer - 1] was recorded does not enter it."""
    model = tiny_model("gpt2")
    tokens = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(3))
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: x + 1.0)]):
        _, cache = model.run_with_cache(tokens)
    assert not torch.allclose(cache["resid_pre", 1], cache["resid_post", 0])
    stack = cache.stack_head_results(1, incl_remainder=True)
    torch.testing.assert_close(stack.sum(0), cache["resid_post", 0], **EXACT)


# -- run_with_cache(return_type=None) --------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_return_type_none_caches_ln_final_and_skips_the_unembedding(family):
    model = tiny_model(family)
    tokens = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    _, full = model.run_with_cache(tokens)
    calls = []
    handle = model.unembed.register_forward_hook(lambda *args: calls.append(1))
    try:
        out, cache = model.run_with_cache(tokens, return_type=None)
    finally:
        handle.remove()
    assert out is None and calls == []
    assert set(cache.keys()) == set(full.keys())
    for name in ("ln_final.hook_normalized", "ln_final.hook_scale"):
        torch.testing.assert_close(cache[name], full[name], atol=0, rtol=0)
    assert model(tokens, return_type=None) is None


def test_return_type_none_without_a_final_norm():
    model = tiny_model("gpt2", normalization=None)
    out, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]), return_type=None)
    assert out is None and "blocks.1.hook_resid_post" in cache and not any("ln_final" in k for k in cache)


# -- TransformerLens as the oracle -------------------------------------------------------------------------
@functools.cache
def _tl_run(family: str = "gpt2"):
    pytest.importorskip("transformer_lens", reason=TL_REASON)
    from tests.compat._tl import tl_and_lens, tokens_for

    processing = dict(fold_ln=True, center_writing_weights=family == "gpt2", center_unembed=True)
    tl_model, model = tl_and_lens(family, processing=processing)
    tokens = tokens_for(model, batch=2, pos=7)
    _, tl_cache = tl_model.run_with_cache(tokens)
    _, cache = model.run_with_cache(tokens)
    return tl_model, model, tokens, tl_cache, cache


def _close(expected, got):
    assert tuple(expected.shape) == tuple(got.shape)
    torch.testing.assert_close(got.to(expected.dtype), expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "key", ["scale1ln1", "scale0ln2", "normalized1ln2", "pattern1", "attn0", "k1", "pre1", "z0a",
            ("scale", 1, "ln1"), ("normalized", 0, "ln2"), ("scale", -1, "ln2"), "scale", "normalized"],
)  # fmt: skip
def test_shorthand_keys_match_transformer_lens(key):
    _, _, _, tl_cache, cache = _tl_run()
    _close(tl_cache[key], cache[key])


@pytest.mark.parametrize("pos_slice", [-1, (1, 4), (None, None, 2), slice(2, 5), [0, 2, 5], torch.tensor([4, 1])],
                         ids=repr)  # fmt: skip
def test_pos_slice_matches_transformer_lens(pos_slice):
    tl_model, model, tokens, tl_cache, cache = _tl_run()
    for name, kwargs in [
        ("accumulated_resid", dict(incl_mid=True, return_labels=True)),
        ("accumulated_resid", dict(layer=1, apply_ln=True)),
        ("decompose_resid", dict(apply_ln=True, return_labels=True)),
        ("stack_head_results", dict(layer=2, incl_remainder=True, return_labels=True)),
        ("stack_head_results", dict(layer=1, apply_ln=True)),
        ("stack_neuron_results", dict(layer=2, neuron_slice=[1, 4], incl_remainder=True, return_labels=True)),
        ("get_full_resid_decomposition", dict(expand_neurons=False, return_labels=True)),
        ("get_full_resid_decomposition", dict(layer=1, apply_ln=True)),
    ]:
        expected = getattr(tl_cache, name)(pos_slice=pos_slice, **kwargs)
        got = getattr(cache, name)(pos_slice=pos_slice, **kwargs)
        if kwargs.get("return_labels"):
            assert got[1] == expected[1], name
            expected, got = expected[0], got[0]
        _close(expected, got)
    stack = cache.decompose_resid(pos_slice=pos_slice)
    _close(tl_cache.apply_ln_to_stack(stack, layer=1, pos_slice=pos_slice),
           cache.apply_ln_to_stack(stack, layer=1, pos_slice=pos_slice))  # fmt: skip
    answer, wrong = tokens[:, -1], tokens[:, 0]
    if Slice(pos_slice).mode == "int":
        _close(tl_cache.logit_attrs(stack, answer, wrong, pos_slice=pos_slice),
               cache.logit_attrs(stack, answer, wrong, pos_slice=pos_slice))  # fmt: skip


def test_neuron_and_batch_slices_match_transformer_lens():
    _, _, _, tl_cache, cache = _tl_run()
    _close(tl_cache.get_neuron_results(1, 3, -1), cache.get_neuron_results(1, 3, -1))
    _close(tl_cache.get_neuron_results(0, (2, 6), (1, 3)), cache.get_neuron_results(0, (2, 6), (1, 3)))
    for batch_slice in (1, (0, 1), [1, 0]):
        tl_sub, sub = tl_cache.apply_slice_to_batch_dim(batch_slice), cache.apply_slice_to_batch_dim(batch_slice)
        assert tl_sub.has_batch_dim == sub.has_batch_dim
        _close(tl_sub["resid_post", 1], sub["resid_post", 1])
        stack = cache.decompose_resid()
        _close(tl_cache.apply_ln_to_stack(stack, batch_slice=batch_slice),
               cache.apply_ln_to_stack(stack, batch_slice=batch_slice))  # fmt: skip


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_stack_head_results_remainder_matches_transformer_lens(family):
    _, model, _, tl_cache, cache = _tl_run(family)
    for layer in range(1, model.cfg.n_layers + 1):
        expected, labels_tl = tl_cache.stack_head_results(layer, incl_remainder=True, return_labels=True)
        got, labels = cache.stack_head_results(layer, incl_remainder=True, return_labels=True)
        assert labels == labels_tl
        _close(expected, got)
        _close(expected[-1], got[-1])


def test_return_type_none_caches_what_transformer_lens_caches():
    tl_model, model, tokens, _, _ = _tl_run()
    tl_out, tl_cache = tl_model.run_with_cache(tokens, return_type=None)
    out, cache = model.run_with_cache(tokens, return_type=None)
    assert tl_out is None and out is None
    assert "ln_final.hook_normalized" in tl_cache.keys() and "ln_final.hook_normalized" in cache
    assert set(tl_cache.keys()) - set(cache.keys()) <= {"hook_tokens"}
    _close(tl_cache["ln_final.hook_normalized"], cache["ln_final.hook_normalized"])
