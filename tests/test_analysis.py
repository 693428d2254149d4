"""ActivationCache analysis (lens.analysis) and the logit lens: exact decomposition identities."""

import plotly.graph_objects as go
import pytest
import torch

import lens
from lens import plot
from lens.logit_lens import logit_lens
from tests.conftest import VOCAB, tiny_model

FAMILIES = ["gpt2", "llama", "neox", "attn_only", "plain"]
ATOL = dict(atol=2e-5, rtol=1e-4)


def _model(family: str) -> lens.HookedTransformer:
    if family == "plain":  # no norm, no positions, no biases at all
        return tiny_model("gpt2", normalization=None, positional=None, qkv_bias=False, attn_out_bias=False,
                          mlp_bias=False)  # fmt: skip
    return tiny_model(family, unembed_bias=True)


@pytest.fixture(scope="module", params=FAMILIES)
def run(request):
    model = _model(request.param)
    tokens = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


def _logit_diff(logits, tok, inc):
    return logits.gather(-1, tok[..., None])[..., 0] - logits.gather(-1, inc[..., None])[..., 0]


def test_decompose_resid_sums_to_resid(run):
    model, _, _, cache = run
    n = model.cfg.n_layers
    stack, labels = cache.decompose_resid(return_labels=True)
    torch.testing.assert_close(stack.sum(0), cache["resid_post", n - 1], **ATOL)
    assert labels[0] == "embed" and ("pos_embed" in labels) == (model.cfg.positional == "learned")
    assert len(labels) == stack.shape[0]
    mid = cache.decompose_resid(layer=1)
    torch.testing.assert_close(mid.sum(0), cache["resid_pre", 1], **ATOL)
    attn = cache.decompose_resid(mode="attn", incl_embeds=False, return_labels=True)[1]
    assert attn == [f"{i}_attn_out" for i in range(n)]
    if not model.cfg.attn_only:
        target = cache["resid_pre", 1] if model.cfg.parallel_attn_mlp else cache["resid_mid", 1]
        torch.testing.assert_close(cache.decompose_resid(layer=1, mlp_input=True).sum(0), target, **ATOL)


def test_stack_head_results_sum_to_attn_out(run):
    model, _, _, cache = run
    heads, labels = cache.stack_head_results(return_labels=True)
    H = model.cfg.n_heads
    assert heads.shape[0] == model.cfg.n_layers * H and labels[:2] == ["L0H0", "L0H1"]
    for layer in range(model.cfg.n_layers):
        per_layer = heads[layer * H : (layer + 1) * H].sum(0) + model.blocks[layer].attn.b_O
        torch.testing.assert_close(per_layer, cache["attn_out", layer], **ATOL)
    with_rem = cache.stack_head_results(layer=1, incl_remainder=True)
    torch.testing.assert_close(with_rem.sum(0), cache["resid_pre", 1], **ATOL)
    assert cache.stack_head_results(layer=0).shape[0] == 0


def test_head_results_from_cached_hook_result():
    model = tiny_model("gpt2", use_attn_result=True)
    tokens = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    _, cache_z = model.run_with_cache(tokens, names_filter=lambda n: "hook_result" not in n)
    torch.testing.assert_close(cache.stack_head_results(), cache_z.stack_head_results(), **ATOL)
    cache_z.compute_head_results()
    torch.testing.assert_close(cache_z["result", 1], cache["result", 1], **ATOL)


def test_stack_neuron_results_sum_to_mlp_out(run):
    model, _, _, cache = run
    if model.cfg.attn_only:
        with pytest.raises(ValueError, match="attn_only"):
            cache.stack_neuron_results()
        return
    neurons, labels = cache.stack_neuron_results(return_labels=True)
    d_mlp = model.cfg.d_mlp
    assert labels[d_mlp] == "L1N0"
    for layer in range(model.cfg.n_layers):
        per_layer = neurons[layer * d_mlp : (layer + 1) * d_mlp].sum(0) + model.blocks[layer].mlp.b_out
        torch.testing.assert_close(per_layer, cache["mlp_out", layer], **ATOL)
    some = cache.stack_neuron_results(layer=1, neuron_slice=[2, 5], pos_slice=-1, return_labels=True)
    assert some[0].shape == (2, 2, model.cfg.d_model) and some[1] == ["L0N2", "L0N5"]
    torch.testing.assert_close(some[0][1], cache.get_neuron_results(0, 5, -1))  # an int drops the neuron dim (TL)


@pytest.mark.parametrize("expand_neurons", [True, False])
def test_full_decomposition_sums_to_resid(run, expand_neurons):
    model, _, _, cache = run
    n = model.cfg.n_layers
    stack, labels = cache.get_full_resid_decomposition(expand_neurons=expand_neurons, return_labels=True)
    assert labels[-1] == "bias" and len(labels) == stack.shape[0]
    torch.testing.assert_close(stack.sum(0), cache["resid_post", n - 1], **ATOL)
    torch.testing.assert_close(cache.get_full_resid_decomposition(layer=1).sum(0), cache["resid_pre", 1], **ATOL)
    if not model.cfg.attn_only:
        target = cache["resid_pre", 1] if model.cfg.parallel_attn_mlp else cache["resid_mid", 1]
        got = cache.get_full_resid_decomposition(layer=1, mlp_input=True, expand_neurons=expand_neurons)
        torch.testing.assert_close(got.sum(0), target, **ATOL)


def test_apply_ln_to_stack_reproduces_norm_outputs(run):
    """Linear part of the norm with the cached scale: normalised components + bias == hook_normalized."""
    model, _, _, cache = run
    if model.cfg.normalization is None:
        stack = cache.decompose_resid()
        assert cache.apply_ln_to_stack(stack) is stack
        return
    bias = lambda norm: norm.b if getattr(norm, "b", None) is not None else 0.0  # noqa: E731
    final = cache.apply_ln_to_stack(cache.decompose_resid()).sum(0) + bias(model.ln_final)
    torch.testing.assert_close(final, cache["ln_final.hook_normalized"], **ATOL)
    ln1 = cache.apply_ln_to_stack(cache.decompose_resid(layer=1), layer=1).sum(0) + bias(model.blocks[1].ln1)
    torch.testing.assert_close(ln1, cache["normalized", 1, "ln1"], **ATOL)
    if not model.cfg.attn_only:
        stack = cache.get_full_resid_decomposition(layer=1, mlp_input=True, apply_ln=True)
        torch.testing.assert_close(stack.sum(0) + bias(model.blocks[1].ln2), cache["normalized", 1, "ln2"], **ATOL)
    # pos_slice picks the matching scales.
    sliced = cache.decompose_resid(pos_slice=-1, apply_ln=True).sum(0) + bias(model.ln_final)
    torch.testing.assert_close(sliced, cache["ln_final.hook_normalized"][:, -1], **ATOL)


def test_apply_ln_recomputes_scale_when_not_cached(run):
    model, tokens, _, _ = run
    if model.cfg.normalization is None:
        return
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "hook_scale" not in n)
    assert "ln_final.hook_scale" not in cache
    bias = model.ln_final.b if getattr(model.ln_final, "b", None) is not None else 0.0
    got = cache.apply_ln_to_stack(cache.decompose_resid(pos_slice=[1, 3]), pos_slice=[1, 3]).sum(0) + bias
    torch.testing.assert_close(got, cache["ln_final.hook_normalized"][:, [1, 3]], **ATOL)


def test_logit_attrs_sum_to_model_logit_diff(run):
    model, tokens, logits, cache = run
    stack = cache.get_full_resid_decomposition(expand_neurons=False)
    tok, inc = tokens, (tokens * 7 + 3) % VOCAB  # [batch, pos] targets
    attrs = cache.logit_attrs(stack, tok, inc)
    assert attrs.shape == stack.shape[:-1]
    torch.testing.assert_close(attrs.sum(0) + cache.logit_offset(tok, inc), _logit_diff(logits, tok, inc), **ATOL)
    # [batch] targets with pos_slice=-1 (the usual DLA setup), and a single token without incorrect_tokens.
    last = cache.decompose_resid(pos_slice=-1)
    ans, wrong = tokens[:, 0], tokens[:, 1]
    got = cache.logit_attrs(last, ans, wrong, pos_slice=-1).sum(0) + cache.logit_offset(ans, wrong)
    torch.testing.assert_close(got, _logit_diff(logits[:, -1], ans, wrong), **ATOL)
    got = cache.logit_attrs(last, 5, pos_slice=-1).sum(0) + cache.logit_offset(5)
    torch.testing.assert_close(got, logits[:, -1, 5], **ATOL)
    # [batch] targets broadcast over all positions.
    got = cache.logit_attrs(stack, ans).sum(0) + cache.logit_offset(ans)[:, None]
    torch.testing.assert_close(got, logits.gather(-1, ans[:, None, None].expand(-1, 7, 1))[..., 0], **ATOL)


def test_accumulated_resid(run):
    model, _, logits, cache = run
    n = model.cfg.n_layers
    resid, labels = cache.accumulated_resid(return_labels=True, incl_mid=True)
    has_mid = not (model.cfg.attn_only or model.cfg.parallel_attn_mlp)
    expected = ["0_pre"] + (["0_mid"] if has_mid else []) + ["1_pre"] + (["1_mid"] if has_mid else [])
    assert labels == expected + ["final_post"]
    torch.testing.assert_close(resid[-1], cache["resid_post", n - 1])
    # apply_ln for the unembed normalises each stream on its own (logit lens); the last is the model's.
    normed = cache.accumulated_resid(apply_ln=True, pos_slice=-1)
    final = normed[-1] @ model.W_U + model.b_U
    torch.testing.assert_close(final, logits[:, -1], **ATOL)
    assert cache.accumulated_resid(layer=1, return_labels=True)[1] == ["0_pre", "1_pre"]  # TL: up to layer


def test_logit_lens_matches_model_and_plots(tmp_path):
    model = tiny_model("gpt2")
    tokens = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    logits = model(tokens)
    res = logit_lens(model, tokens, top_k=3, batch_index=1, keep_logits=True, incl_mid=True)
    assert res.labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    assert res.top_tokens.shape == (5, 6, 3) and res.target_probs.shape == (5, 6)
    torch.testing.assert_close(res.logits[-1], logits[1], **ATOL)
    assert res.top_tokens[-1, :, 0].tolist() == logits[1].argmax(-1).tolist()
    probs = logits[1].softmax(-1)
    torch.testing.assert_close(res.target_probs[-1, :-1], probs[:-1].gather(-1, tokens[1, 1:, None])[:, 0], **ATOL)
    assert torch.isnan(res.target_probs[:, -1]).all()
    fig = res.figure(title="lens")
    assert isinstance(fig, go.Figure) and fig.data[0].z.shape == (5, 6)
    html = plot.save_html(fig, tmp_path / "ll.html").read_text()
    assert '<script src="http' not in html and "plotly" in html.lower()


def test_figures_from_analysis(tmp_path):
    model = tiny_model("llama")
    tokens = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    _, cache = model.run_with_cache(tokens)
    str_tokens = [f"t{t}" for t in tokens[0].tolist()]
    stack, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)
    attrs = cache.logit_attrs(stack, tokens[:, 0], tokens[:, 1], pos_slice=-1)  # [component, batch]
    line = plot.logit_attribution_line(attrs[:, 0], labels, title="DLA")
    assert list(line.data[0].x) == labels
    heads = plot.attention_patterns(cache["pattern", 1][0], str_tokens, heads=[0, 3])
    assert len(heads.data) == 2
    out = plot.figures_to_html([line, heads], tmp_path / "report.html")
    assert out.read_text().count("<div") >= 2


def test_bad_input():
    model = tiny_model("gpt2")
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="layer"):
        cache.decompose_resid(layer=5)
    with pytest.raises(ValueError, match="mode"):
        cache.decompose_resid(mode="heads")
    with pytest.raises(ValueError, match="layer"):
        cache.stack_head_results(layer=-3)
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(cache.decompose_resid(), torch.tensor([1]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="do not match"):
        cache.logit_attrs(cache.decompose_resid(), torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="mlp_input"):
        cache.get_full_resid_decomposition(mlp_input=True)
    with pytest.raises(IndexError):
        cache.decompose_resid(pos_slice=7)
    _, narrow = model.run_with_cache(torch.tensor([[1, 2, 3]]), names_filter=lambda n: "resid_pre" in n)
    with pytest.raises(ValueError, match="hook_scale"):
        narrow.apply_ln_to_stack(narrow.accumulated_resid(layer=1))
    with pytest.raises(ValueError, match="not cached"):
        narrow.decompose_resid()
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(model, torch.tensor([[1, 2]]), top_k=0)


def test_logit_attrs_with_folded_layer_norm():
    """With fold_ln the final norm has weight 1 and bias 0: only the unembedding bias is left over."""
    model = _model("gpt2")
    if not hasattr(model, "process_weights"):
        pytest.skip("weight processing (fold_ln) is not available")
    model.process_weights(fold_ln=True)
    tokens = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    logits, cache = model.run_with_cache(tokens)
    tok, inc = tokens[:, -1], tokens[:, 0]
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), tok, inc, pos_slice=-1)
    b_u = model.b_U[tok] - model.b_U[inc]
    torch.testing.assert_close(cache.logit_offset(tok, inc), b_u, **ATOL)
    torch.testing.assert_close(attrs.sum(0) + b_u, _logit_diff(logits[:, -1], tok, inc), **ATOL)


def test_cache_without_batch_dim():
    model = _model("gpt2")
    tokens = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))
    logits, cache = model.run_with_cache(tokens, remove_batch_dim=True)
    full = cache.get_full_resid_decomposition()
    assert full.shape[1:] == (6, model.cfg.d_model)
    torch.testing.assert_close(full.sum(0), cache["resid_post", -1], **ATOL)
    tok, inc = tokens[0], (tokens[0] + 1) % VOCAB
    got = cache.logit_attrs(full, tok, inc).sum(0) + cache.logit_offset(tok, inc)
    torch.testing.assert_close(got, _logit_diff(logits[0], tok, inc), **ATOL)
    assert logit_lens(model, tokens, cache=cache).top_tokens.shape == (3, 6, 5)
