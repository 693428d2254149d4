"""TransformerLens's per-site patching API: patch setters and ``generic_activation_patch`` with a setter.

Oracles: the setters' definitions written out on random tensors, lens's batched sweeps over the same sites
(``get_act_patch_*``: a different engine, same numbers), a hand-written ``run_with_hooks`` loop for a custom
setter, and TransformerLens's own ``generic_activation_patch`` on identical weights (optional).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lens import patching
from tests.compat._tl import lens_model, tokens_for

SETTERS = {  # setter -> (index, the slice of a [2, 5, 4, 6]-shaped activation it must replace)
    "layer_pos_patch_setter": ((0, 3), (slice(None), 3)),
    "layer_pos_head_vector_patch_setter": ((1, 2, 1), (slice(None), 2, 1)),
    "layer_head_vector_patch_setter": ((1, 3), (slice(None), slice(None), 3)),
    "layer_head_pattern_patch_setter": ((0, 1), (slice(None), 1)),
    "layer_head_pos_pattern_patch_setter": ((0, 1, 2), (slice(None), 1, 2)),
    "layer_head_dest_src_pos_pattern_patch_setter": ((0, 1, 2, 4), (slice(None), 1, 2, 4)),
}


@pytest.mark.parametrize("name", sorted(SETTERS))
def test_each_setter_replaces_exactly_its_slice(name):
    index, where = SETTERS[name]
    g = torch.Generator().manual_seed(0)
    corrupted, clean = torch.randn(2, 5, 4, 6, generator=g), torch.randn(2, 5, 4, 6, generator=g)
    expected = corrupted.clone()
    expected[where] = clean[where]
    out = getattr(patching, name)(corrupted.clone(), index, clean)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match=f"of {len(index)} numbers"):
        getattr(patching, name)(corrupted.clone(), (*index, 0), clean)


@pytest.fixture(scope="module")
def setup():
    model = lens_model("gpt2")
    clean, corrupted = tokens_for(model, batch=1, pos=6, seed=1), tokens_for(model, batch=1, pos=6, seed=2)
    _, cache = model.run_with_cache(clean)
    answer = int(clean[0, -1])

    def metric(logits):
        return logits[0, -1, answer] - logits[0, -1].mean()

    return model, corrupted, cache, metric


CASES = [  # (setter, activation, TransformerLens index axes, the batched lens sweep over the same sites)
    ("layer_pos_patch_setter", "resid_pre", ["layer", "pos"], "get_act_patch_resid_pre"),
    ("layer_pos_patch_setter", "attn_out", ["layer", "pos"], "get_act_patch_attn_out"),
    ("layer_head_vector_patch_setter", "z", ["layer", "head"], "get_act_patch_attn_head_out_all_pos"),
    ("layer_pos_head_vector_patch_setter", "z", ["layer", "pos", "head"], "get_act_patch_attn_head_out_by_pos"),
    ("layer_head_pattern_patch_setter", "pattern", ["layer", "head"], "get_act_patch_attn_head_pattern_all_pos"),
    ("layer_head_pos_pattern_patch_setter", "pattern", ["layer", "head_index", "dest_pos"],
     "get_act_patch_attn_head_pattern_by_pos"),
]  # fmt: skip


@pytest.mark.parametrize(("setter", "act", "axes", "sweep"), CASES)
def test_setter_call_equals_the_batched_sweep(setup, setter, act, axes, sweep):
    model, corrupted, cache, metric = setup
    fn = getattr(patching, setter)
    positional = patching.generic_activation_patch(model, corrupted, cache, metric, fn, act, axes)
    keyword = patching.generic_activation_patch(
        model, corrupted, cache, metric, patch_setter=fn, activation_name=act, index_axis_names=axes
    )
    batched = getattr(patching, sweep)(model, corrupted, cache, metric)
    assert isinstance(positional, torch.Tensor) and positional.shape == batched.shape
    torch.testing.assert_close(positional, batched, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(keyword, positional, atol=0, rtol=0)


def test_a_custom_setter_runs_per_site_as_a_hand_written_loop(setup):
    model, corrupted, cache, metric = setup

    def half(corrupted_activation, index, clean_activation):  # a setter no batched sweep knows
        layer, pos = index
        corrupted_activation[:, pos] = 0.5 * (corrupted_activation[:, pos] + clean_activation[:, pos])
        return corrupted_activation

    got = patching.generic_activation_patch(model, corrupted, cache, metric, half, "resid_mid", ["layer", "pos"])
    for layer in range(model.cfg.n_layers):
        for pos in range(corrupted.shape[1]):
            name = f"blocks.{layer}.hook_resid_mid"
            hook = (name, lambda x, hook, idx=(layer, pos), clean=cache[name]: half(x, idx, clean))
            with torch.no_grad():
                want = metric(model.run_with_hooks(corrupted, fwd_hooks=[hook]))
            torch.testing.assert_close(got[layer, pos], want, atol=1e-5, rtol=1e-5)


def test_index_rows_give_one_value_per_row(setup):
    model, corrupted, cache, metric = setup
    rows = [[1, 4], [0, 2], [1, 0]]
    got = patching.generic_activation_patch(
        model, corrupted, cache, metric, patching.layer_pos_patch_setter, "resid_pre", None, rows
    )
    full = patching.get_act_patch_resid_pre(model, corrupted, cache, metric)
    torch.testing.assert_close(got, torch.stack([full[i, j] for i, j in rows]), atol=1e-4, rtol=1e-4)


def test_setter_call_errors(setup):
    model, corrupted, cache, metric = setup
    fn = patching.layer_pos_patch_setter
    with pytest.raises(ValueError, match="exactly one of index_axis_names and index_df"):
        patching.generic_activation_patch(model, corrupted, cache, metric, fn, "resid_pre")
    with pytest.raises(ValueError, match="must start with 'layer'"):
        patching.generic_activation_patch(model, corrupted, cache, metric, fn, "resid_pre", ["pos", "layer"])
    with pytest.raises(TypeError, match="unexpected keyword argument 'index_dff'"):
        patching.generic_activation_patch(model, corrupted, cache, metric, "resid_pre", index_dff=None)
    with pytest.raises(ValueError, match="of 2 numbers"):  # the setter's own check, named
        patching.generic_activation_patch(model, corrupted, cache, metric, fn, "z", ["layer", "pos", "head"])


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="index_df needs pandas (not a lens dependency)")
def test_index_df_and_return_index_df(setup):
    import pandas as pd

    model, corrupted, cache, metric = setup
    fn = patching.layer_pos_patch_setter
    out, df = patching.generic_activation_patch(
        model, corrupted, cache, metric, fn, "resid_pre", ["layer", "pos"], return_index_df=True
    )
    assert list(df.columns) == ["layer", "pos"] and len(df) == out.numel()
    pick = pd.DataFrame([[1, 4], [0, 2]], columns=["layer", "pos"])
    flat = patching.generic_activation_patch(model, corrupted, cache, metric, fn, "resid_pre", index_df=pick)
    torch.testing.assert_close(flat, torch.stack([out[1, 4], out[0, 2]]))
    torch.testing.assert_close(
        torch.tensor(patching.make_df_from_ranges([2, 3], ["a", "b"]).values),
        torch.cartesian_prod(*[torch.arange(2), torch.arange(3)]),
    )


@pytest.mark.skipif(
    importlib.util.find_spec("transformer_lens") is None,
    reason="optional oracle: transformer_lens is not installed (see docs/migrating-from-transformer-lens.md)",
)
@pytest.mark.parametrize(("setter", "act", "axes", "sweep"), CASES)
def test_setter_call_matches_transformer_lens(setter, act, axes, sweep):
    import transformer_lens.patching as tl_patching

    from tests.compat._tl import tl_and_lens_gpt2

    tl_model, model = tl_and_lens_gpt2()
    clean, corrupted = tokens_for(model, batch=1, pos=6, seed=1), tokens_for(model, batch=1, pos=6, seed=2)

    def metric(logits):
        return logits[0, -1, 3] - logits[0, -1].mean()

    _, tl_cache = tl_model.run_with_cache(clean)
    _, cache = model.run_with_cache(clean)
    expected = tl_patching.generic_activation_patch(
        tl_model, corrupted, tl_cache, metric, getattr(tl_patching, setter), act, axes
    )
    got = patching.generic_activation_patch(model, corrupted, cache, metric, getattr(patching, setter), act, axes)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
