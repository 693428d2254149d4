"""Batched activation patching (lens.patching): equals a per-site loop; clean/corrupted identities; errors."""

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import lens
from lens import patching, plot
from tests.conftest import VOCAB, tiny_model

ANS, WRONG = 3, 4


def row_metric(logits):  # per-row: [rows]
    return logits[:, -1, ANS] - logits[:, -1, WRONG]


def run_metric(logits):  # written for one run: 0-d (mean over the prompt batch)
    return (logits[:, -1, ANS] - logits[:, -1, WRONG]).mean()


def _setup(family, n_prompts=2, pos=5, **overrides):
    model = tiny_model(family, **{"d_mlp": 16, **overrides})
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, model.cfg.d_vocab, (n_prompts, pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = (corrupted[:, 1] + 11) % model.cfg.d_vocab
    _, clean_cache = model.run_with_cache(clean)
    return model, clean, corrupted, clean_cache


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def setup(request):
    return _setup(request.param)


@torch.no_grad()
def naive(model, corrupted, clean_cache, metric, hook_of, index_of, shape):
    """Reference: one forward per site with a plain hook (TransformerLens's loop)."""
    out = torch.empty(shape)
    for site in np.ndindex(*shape):
        name = hook_of(site[0])

        def hook(act, hook, site=site, name=name):
            idx = index_of(site)
            act[idx] = clean_cache[name][idx]
            return act

        out[site] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])).float().mean()
    return out


ALL, RESID = slice(None), lambda s: (ALL, s[1])
CASES = {
    "resid_pre": ("blocks.{}.hook_resid_pre", RESID, "pos"),
    "resid_mid": ("blocks.{}.hook_resid_mid", RESID, "pos"),
    "attn_out": ("blocks.{}.hook_attn_out", RESID, "pos"),
    "mlp_out": ("blocks.{}.hook_mlp_out", RESID, "pos"),
    "attn_head_out_all_pos": ("blocks.{}.attn.hook_z", lambda s: (ALL, ALL, s[1]), "head"),
    "attn_head_q_all_pos": ("blocks.{}.attn.hook_q", lambda s: (ALL, ALL, s[1]), "head"),
    "attn_head_k_by_pos": ("blocks.{}.attn.hook_k", lambda s: (ALL, s[1], s[2]), "pos kv"),
    "attn_head_v_all_pos": ("blocks.{}.attn.hook_v", lambda s: (ALL, ALL, s[1]), "kv"),
    "attn_head_out_by_pos": ("blocks.{}.attn.hook_z", lambda s: (ALL, s[1], s[2]), "pos head"),
    "attn_head_pattern_all_pos": ("blocks.{}.attn.hook_pattern", lambda s: (ALL, s[1]), "head"),
    "attn_head_pattern_by_pos": ("blocks.{}.attn.hook_pattern", lambda s: (ALL, s[1], s[2]), "head pos"),
    "mlp_post_all_pos": ("blocks.{}.mlp.hook_post", lambda s: (ALL, ALL, s[1]), "neuron"),
    "attn_head_pattern_dest_src_pos": ("blocks.{}.attn.hook_pattern", lambda s: (ALL, *s[1:]), "head pos pos"),
}


def _shape(model, pos, dims):
    c = model.cfg
    size = {"pos": pos, "head": c.n_heads, "kv": c.n_key_value_heads, "neuron": c.d_mlp}
    return (c.n_layers, *[size[d] for d in dims.split()])


@pytest.mark.parametrize("case", list(CASES))
def test_matches_per_site_loop(setup, case):
    model, _, corrupted, clean_cache = setup
    hook, index_of, dims = CASES[case]
    shape = _shape(model, corrupted.shape[1], dims)
    got = getattr(patching, f"get_act_patch_{case}")(model, corrupted, clean_cache, row_metric, batch_size=7)
    want = naive(model, corrupted, clean_cache, row_metric, hook.format, index_of, shape)
    assert got.shape == shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("helper", ["resid_pre", "attn_head_out_by_pos", "attn_head_pattern_all_pos", "mlp_out"])
def test_clean_and_corrupted_identities(setup, helper):
    """Patching clean into clean gives the clean metric everywhere; corrupted into corrupted the corrupted."""
    model, clean, corrupted, clean_cache = setup
    fn = getattr(patching, f"get_act_patch_{helper}")
    with torch.no_grad():
        clean_metric = row_metric(model(clean)).mean()
        corrupted_logits, corrupted_cache = model.run_with_cache(corrupted)
    got = fn(model, clean, clean_cache, row_metric)
    torch.testing.assert_close(got, torch.full_like(got, clean_metric.item()), atol=1e-5, rtol=1e-5)
    res = fn(model, corrupted, corrupted_cache, row_metric, labelled=True)
    torch.testing.assert_close(res.values, torch.full_like(res.values, res.baseline), atol=1e-5, rtol=1e-5)
    assert res.baseline == pytest.approx(row_metric(corrupted_logits).mean().item(), abs=1e-5)


def test_batch_size_start_layer_and_metric_modes(setup):
    model, _, corrupted, clean_cache = setup
    ref = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, row_metric)
    for kw in (dict(batch_size=1), dict(batch_size=4), dict(batch_size=10_000), dict(start_at_layer=False)):
        torch.testing.assert_close(
            patching.get_act_patch_resid_pre(model, corrupted, clean_cache, row_metric, **kw), ref
        )
    # A single-run (0-d) metric: vmapped; one using .item() cannot be vmapped and falls back to a loop.
    torch.testing.assert_close(patching.get_act_patch_resid_pre(model, corrupted, clean_cache, run_metric), ref)

    def item_metric(logits):
        return torch.tensor(run_metric(logits).item())

    torch.testing.assert_close(patching.get_act_patch_resid_pre(model, corrupted, clean_cache, item_metric), ref)
    # A run metric with per-prompt answers (fixed batch size) works through vmap.
    answers = torch.tensor([ANS, WRONG])

    def per_prompt(logits):
        return logits[torch.arange(2), -1, answers].sum()

    want = naive(model, corrupted, clean_cache, per_prompt, "blocks.{}.hook_resid_pre".format, RESID, (2, 5))
    torch.testing.assert_close(patching.get_act_patch_resid_pre(model, corrupted, clean_cache, per_prompt), want)


def test_single_prompt_and_clean_batch_broadcast():
    model, clean, corrupted, _ = _setup("gpt2", n_prompts=1)
    _, clean_cache = model.run_with_cache(clean)
    got = patching.get_act_patch_attn_out(model, corrupted.repeat(3, 1), clean_cache, row_metric)
    want = patching.get_act_patch_attn_out(model, corrupted, clean_cache, row_metric)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_every_helpers():
    model, _, corrupted, clean_cache = _setup("llama")  # GQA: 4 query heads, 2 kv heads
    L, P, H = 2, corrupted.shape[1], 4
    block = patching.get_act_patch_block_every(model, corrupted, clean_cache, row_metric)
    assert block.shape == (3, L, P)
    torch.testing.assert_close(block[1], patching.get_act_patch_attn_out(model, corrupted, clean_cache, row_metric))
    heads = patching.get_act_patch_attn_head_all_pos_every(model, corrupted, clean_cache, row_metric)
    assert heads.shape == (5, L, H)
    assert torch.isnan(heads[2:4, :, 2:]).all() and not torch.isnan(heads[2:4, :, :2]).any()
    k = patching.get_act_patch_attn_head_k_all_pos(model, corrupted, clean_cache, row_metric)
    torch.testing.assert_close(heads[2, :, :2], k)
    by_pos = patching.get_act_patch_attn_head_by_pos_every(model, corrupted, clean_cache, row_metric)
    assert by_pos.shape == (5, L, P, H)
    pattern = patching.get_act_patch_attn_head_pattern_by_pos(model, corrupted, clean_cache, row_metric)
    torch.testing.assert_close(by_pos[4], pattern.transpose(1, 2))
    attn_only, _, corrupted, cache = _setup("attn_only")
    block = patching.get_act_patch_block_every(attn_only, corrupted, cache, row_metric)
    assert block.shape == (3, L, P) and torch.isnan(block[2]).all() and not torch.isnan(block[:2]).any()


def test_subsets_and_generic_hooks(setup):
    model, _, corrupted, clean_cache = setup
    full = patching.get_act_patch_attn_head_out_by_pos(model, corrupted, clean_cache, row_metric)
    sub = patching.generic_activation_patch(
        model, corrupted, clean_cache, row_metric, "z", "layer_pos_head", layers=[1], positions=[1, -1], heads=[0, 2]
    )
    assert sub.dims == ("layer", "pos", "head") and sub.indices["pos"] == [1, 4]
    torch.testing.assert_close(sub.values, full[1:, [1, 4]][:, :, [0, 2]])
    # Explicit hook names, including hooks before the blocks (run from tokens) and after them.
    names = ["hook_embed", "blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    got = patching.generic_activation_patch(model, corrupted, clean_cache, row_metric, names, ("layer", "pos"))
    want = torch.cat([naive(model, corrupted, clean_cache, row_metric, lambda _, n=n: n, RESID, (1, 5)) for n in names])
    torch.testing.assert_close(got.values, want, atol=1e-5, rtol=1e-5)
    assert got.labels["layer"] == names


def test_labelled_results_flow_into_figures(tmp_path):
    model, clean, corrupted, clean_cache = _setup("gpt2", d_vocab=259)
    model.set_tokenizer(lens.Tokenizer.byte_level())
    res = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, row_metric, labelled=True)
    assert res.labels["pos"] == model.to_str_tokens(corrupted[0]) and res.labels["layer"] == ["0", "1"]
    fig = res.figure()
    assert isinstance(fig, go.Figure)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), res.values.numpy(), rtol=1e-6)
    assert list(fig.data[0].x) == plot.unique_labels(res.labels["pos"])
    np.testing.assert_allclose(np.asarray(res), res.values.numpy())
    heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, row_metric, labelled=True)
    assert list(heads.figure().data[0].x) == ["H0", "H1", "H2", "H3"]
    by_pos = patching.get_act_patch_attn_head_out_by_pos(model, corrupted, clean_cache, row_metric, labelled=True)
    assert np.asarray(by_pos.figure(head=2).data[0].z).shape == (2, 5)
    with pytest.raises(ValueError, match="fix the others"):
        by_pos.figure()
    plain = plot.patching_heatmap(heads.values, heads.labels["head"], x_title="Head")  # a plain tensor works too
    html = plot.figures_to_html([fig, plain], tmp_path / "patching.html").read_text()
    assert 'src="http' not in html


def test_bad_input():
    model, clean, corrupted, clean_cache = _setup("gpt2")
    f = patching.get_act_patch_resid_pre
    with pytest.raises(ValueError, match="same number of positions"):
        f(model, corrupted[:, :4], clean_cache, row_metric)
    with pytest.raises(ValueError, match="batch size"):
        f(model, corrupted.repeat(2, 1), clean_cache, row_metric)
    with pytest.raises(ValueError, match="unknown hook name"):
        patching.generic_activation_patch(model, corrupted, clean_cache, row_metric, "blocks.0.hook_resid_pree")
    with pytest.raises(ValueError, match="unknown hook name"):
        patching.generic_activation_patch(model, corrupted, clean_cache, row_metric, "resid_middle")
    with pytest.raises(ValueError, match=r"returned shape \(2, 5\)"):
        f(model, corrupted, clean_cache, lambda lg: lg[:, :, 0])
    with pytest.raises(TypeError, match="torch.Tensor"):
        f(model, corrupted, clean_cache, lambda lg: "high")
    with pytest.raises(TypeError, match="callable"):
        f(model, corrupted, clean_cache, 3.0)
    with pytest.raises(RuntimeError, match="any number of rows"):  # assumes the prompt batch size
        f(model, corrupted, clean_cache, lambda lg: lg.view(2, 5, VOCAB)[:, -1, ANS])
    with pytest.raises(ValueError, match=r"returned shape \(2,\) on batched logits"):
        f(model, corrupted, clean_cache, lambda lg: lg[torch.arange(2), -1, ANS])
    with pytest.raises(ValueError, match=r"layers=\[2\] out of range"):
        f(model, corrupted, clean_cache, row_metric, layers=[0, 2])
    with pytest.raises(ValueError, match=r"head indices=\[4\] out of range"):
        patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, row_metric, heads=[4])
    with pytest.raises(ValueError, match="does not apply"):
        patching.generic_activation_patch(model, corrupted, clean_cache, row_metric, "resid_pre", ("layer", "head"))
    with pytest.raises(ValueError, match="index space is"):
        f(model, corrupted, clean_cache, row_metric, heads=[0])
    with pytest.raises(ValueError, match="batch_size"):
        f(model, corrupted, clean_cache, row_metric, batch_size=0)
    with pytest.raises(ValueError, match="start with 'layer'"):
        patching.generic_activation_patch(model, corrupted, clean_cache, row_metric, "z", ("head",))
    _, narrow = model.run_with_cache(clean, names_filter=lambda n: "resid_pre" in n)
    with pytest.raises(ValueError, match="not cached"):
        patching.get_act_patch_attn_out(model, corrupted, narrow, row_metric)
    with pytest.raises(TypeError, match="tensor"):
        f(model, 3, clean_cache, row_metric)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        f(model, corrupted + VOCAB, clean_cache, row_metric)
