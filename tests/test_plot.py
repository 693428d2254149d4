"""Tests for lens.plot: figure data matches inputs, labels are unique, HTML export is standalone."""

import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from lens import plot

TOKENS = ["<bos>", " the", " cat", " the", "\n"]


def _z(trace) -> np.ndarray:
    return np.asarray(trace.z, dtype=float)


def _assert_unique(labels, n):
    labels = list(labels)
    assert len(labels) == n
    assert len(set(labels)) == n


def test_unique_labels():
    assert plot.unique_labels(["a", "b"]) == ["a", "b"]
    assert plot.unique_labels(["the", "cat", "the"]) == ["0: the", "1: cat", "2: the"]
    assert plot.unique_labels(["", "x"]) == ["0: ", "1: x"]
    assert plot.unique_labels(["<bos>", "a\nb"]) == ["&lt;bos&gt;", "a\\nb"]


def test_to_numpy_handles_dtypes():
    t = torch.arange(4, dtype=torch.bfloat16).reshape(2, 2).requires_grad_(True)
    out = plot.to_numpy(t)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 1], [2, 3]])


def test_attention_patterns_slider():
    pattern = torch.softmax(torch.randn(3, 5, 5), dim=-1)
    fig = plot.attention_patterns(pattern, TOKENS, title="L0")
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == 3
    for h, trace in enumerate(fig.data):
        np.testing.assert_allclose(_z(trace), pattern[h].numpy(), rtol=1e-6)
        _assert_unique(trace.x, 5)
        assert list(trace.x) == list(trace.y)
        assert "%{y}" in trace.hovertemplate and "%{x}" in trace.hovertemplate and "%{z" in trace.hovertemplate
    assert list(fig.data[0].x)[1] == "1:  the" and list(fig.data[0].x)[3] == "3:  the"
    assert [t.visible for t in fig.data] == [True, False, False]
    assert len(fig.layout.sliders[0].steps) == 3
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)
    assert fig.layout.title.text == "L0"


def test_attention_patterns_grid_and_head_selection():
    pattern = np.random.rand(4, 5, 5)
    fig = plot.attention_patterns(pattern, TOKENS, heads=[3, 1], head_labels=["L2H3", "L2H1"], mode="grid")
    assert len(fig.data) == 2
    np.testing.assert_allclose(_z(fig.data[0]), pattern[3])
    np.testing.assert_allclose(_z(fig.data[1]), pattern[1])
    assert [a.text for a in fig.layout.annotations] == ["L2H3", "L2H1"]
    single = plot.attention_patterns(torch.rand(5, 5, dtype=torch.float16), TOKENS)
    assert len(single.data) == 1 and not single.layout.sliders


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pattern=torch.rand(5)), "dimension"),
        (dict(pattern=torch.rand(1, 2, 5, 5)), "dimension"),
        (dict(pattern=torch.rand(2, 4, 4)), "5 entries.*4"),
        (dict(pattern=torch.rand(2, 5, 5), heads=[2]), "out of range"),
        (dict(pattern=torch.rand(2, 5, 5), head_labels=["a"]), "1 entries.*2"),
        (dict(pattern=torch.rand(2, 5, 5), mode="bogus"), "mode"),
    ],
)
def test_attention_patterns_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot.attention_patterns(str_tokens=TOKENS, **kwargs)


def test_patching_heatmap():
    values = torch.randn(3, 5)
    fig = plot.patching_heatmap(values, TOKENS, title="resid_pre")
    trace = fig.data[0]
    np.testing.assert_allclose(_z(trace), values.numpy(), rtol=1e-6)
    _assert_unique(trace.x, 5)
    _assert_unique(trace.y, 3)
    assert trace.zmid == 0.0
    assert fig.layout.xaxis.type == "category"
    assert fig.layout.xaxis.title.text == "Position" and fig.layout.yaxis.title.text == "Layer"
    heads = plot.patching_heatmap(np.ones((2, 4)), None, x_title="Head", zmid=0.5)
    assert list(heads.data[0].x) == ["0", "1", "2", "3"] and heads.data[0].zmid == 0.5


def test_patching_heatmap_bad_inputs():
    with pytest.raises(ValueError, match="dimension"):
        plot.patching_heatmap(torch.randn(2, 3, 4), None)
    with pytest.raises(ValueError, match="4 entries.*5"):
        plot.patching_heatmap(torch.randn(2, 5), TOKENS[:4])
    with pytest.raises(ValueError, match="3 entries.*2"):
        plot.patching_heatmap(torch.randn(2, 5), TOKENS, y_labels=["a", "b", "c"])


def test_logit_lens():
    probs = torch.rand(2, 5)
    preds = [["a", "b", "c", "d", "<e>"], ["f", "g", "h", "i", "j"]]
    fig = plot.logit_lens(preds, probs, TOKENS, layer_labels=["L0", "L1"])
    trace = fig.data[0]
    np.testing.assert_allclose(_z(trace), probs.numpy(), rtol=1e-6)
    assert [list(r) for r in trace.text] == [["a", "b", "c", "d", "&lt;e&gt;"], preds[1]]
    assert trace.texttemplate == "%{text}"
    _assert_unique(trace.x, 5)
    assert list(trace.y) == ["L0", "L1"]
    assert (trace.zmin, trace.zmax) == (0.0, 1.0)
    with pytest.raises(ValueError, match="1 entries.*2"):
        plot.logit_lens(preds[:1], probs, TOKENS)
    with pytest.raises(ValueError, match="4 entries.*5"):
        plot.logit_lens([r[:4] for r in preds], probs, TOKENS)
    with pytest.raises(ValueError, match="4 entries.*5"):
        plot.logit_lens(preds, probs, TOKENS[:4])


def test_logit_attribution_line():
    labels = ["embed", "0_attn_out", "0_mlp_out", "1_attn_out"]
    v = torch.randn(4)
    fig = plot.logit_attribution_line(v, labels, title="acc")
    assert len(fig.data) == 1
    np.testing.assert_allclose(np.asarray(fig.data[0].y), v.numpy(), rtol=1e-6)
    assert list(fig.data[0].x) == labels
    assert fig.layout.yaxis.title.text == "Logit attribution"

    comp_pos = torch.randn(4, 3)  # component pos -> one line per pos
    fig = plot.logit_attribution_line(comp_pos, labels, line_labels=["p0", "p1", "p2"])
    assert [t.name for t in fig.data] == ["p0", "p1", "p2"]
    for i, t in enumerate(fig.data):
        np.testing.assert_allclose(np.asarray(t.y), comp_pos[:, i].numpy(), rtol=1e-6)

    batch_comp = np.random.randn(2, 4)  # batch component -> one line per batch item
    fig = plot.logit_attribution_line(batch_comp, labels)
    assert len(fig.data) == 2
    np.testing.assert_allclose(np.asarray(fig.data[1].y), batch_comp[1])

    square = np.random.randn(4, 4)
    with pytest.raises(ValueError, match="component_dim"):
        plot.logit_attribution_line(square, labels)
    fig = plot.logit_attribution_line(square, labels, component_dim=0)
    np.testing.assert_allclose(np.asarray(fig.data[0].y), square[:, 0])
    with pytest.raises(ValueError, match="3 entries.*4"):
        plot.logit_attribution_line(v, labels[:3])
    with pytest.raises(ValueError, match="dimension"):
        plot.logit_attribution_line(torch.randn(2, 2, 4), labels)


def test_line_and_imshow():
    v = torch.randn(2, 3)
    fig = plot.line(v, x=["a", "a", "b"], labels=["x", "y"], title="t", y_title="val")
    for i, t in enumerate(fig.data):
        np.testing.assert_allclose(np.asarray(t.y), v[i].numpy(), rtol=1e-6)
        _assert_unique(t.x, 3)
    assert fig.layout.yaxis.title.text == "val"
    fig = plot.line(np.arange(3.0))
    assert list(fig.data[0].x) == [0, 1, 2]
    with pytest.raises(ValueError, match="2 entries.*3"):
        plot.line(v, x=[1, 2])

    m = torch.randn(3, 2)
    fig = plot.imshow(m, x=["a", "b"], y=["p", "q", "p"], zmid=None)
    np.testing.assert_allclose(_z(fig.data[0]), m.numpy(), rtol=1e-6)
    _assert_unique(fig.data[0].y, 3)
    assert fig.data[0].zmid is None
    with pytest.raises(ValueError, match="dimension"):
        plot.imshow(torch.randn(3))


def _plotly_js_count(text: str) -> int:
    return text.count("plotly.js v")


def test_save_html_standalone(tmp_path):
    fig = plot.patching_heatmap(torch.randn(2, 5), TOKENS)
    out = plot.save_html(fig, tmp_path / "nested" / "dir" / "fig.html")
    assert out == tmp_path / "nested" / "dir" / "fig.html" and out.exists()
    text = out.read_text(encoding="utf-8")
    assert _plotly_js_count(text) == 1
    assert not re.search(r"<script[^>]*src=[\"']?https?:", text)
    assert "<html" in text


def test_figures_to_html_includes_plotlyjs_once(tmp_path):
    figs = [
        plot.attention_patterns(torch.rand(2, 5, 5), TOKENS),
        plot.imshow(torch.randn(2, 2)),
        plot.line(torch.randn(4)),
    ]
    out = plot.figures_to_html(figs, tmp_path / "r" / "report.html", title="Report <1>")
    text = out.read_text(encoding="utf-8")
    assert _plotly_js_count(text) == 1
    assert not re.search(r"<script[^>]*src=[\"']?https?:", text)
    assert text.count("Plotly.newPlot") == 3
    assert "Report &lt;1&gt;" in text
    with pytest.raises(ValueError):
        plot.figures_to_html([], tmp_path / "empty.html")


def test_html_exports_are_deterministic(tmp_path):
    """The same figure written twice gives the same bytes; different figures get different div ids."""
    import torch

    from lens import plot

    a, b = plot.imshow(torch.arange(6.0).reshape(2, 3)), plot.imshow(torch.ones(2, 3))
    first = plot.save_html(a, tmp_path / "1.html").read_bytes()
    assert plot.save_html(a, tmp_path / "2.html").read_bytes() == first
    assert plot.figure_id(a) != plot.figure_id(b) and plot.figure_id(a).encode() in first
    report = plot.figures_to_html([a, a, b], tmp_path / "r.html").read_bytes()
    assert plot.figures_to_html([a, a, b], tmp_path / "s.html").read_bytes() == report
    ids = {plot.figure_id(a, "0"), plot.figure_id(a, "1"), plot.figure_id(b, "2")}
    assert len(ids) == 3 and all(i.encode() in report for i in ids)  # a figure shown twice: two distinct divs


# ----------------------------------------------------------------------------- generation traces


def _trace():
    """Two rows, four steps, k=3: row 0 has an accepted and a rejected proposal, a chosen token outside the
    top 3 (step 2) and an EOS at step 2 (step 3 is after it)."""
    from lens.generation.trace import GenerationTrace

    top_ids = torch.tensor([[[104, 105, 32], [33, 104, 10], [60, 62, 38], [0, 0, 0]], [[104, 97, 98]] * 4])
    raw = torch.tensor([[[0.5, 0.3, 0.1], [0.6, 0.2, 0.1], [0.4, 0.3, 0.2], [0.0, 0.0, 0.0]], [[0.7, 0.2, 0.1]] * 4])
    after = torch.tensor([[[0.6, 0.4, 0.0], [0.8, 0.2, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], [[0.8, 0.2, 0.0]] * 4])
    return GenerationTrace(
        tokens=torch.tensor([[105, 33, 2, 0], [104] * 4]),
        token_probs=torch.tensor([[0.4, 0.8, 0.05, 0.0], [0.8] * 4]),
        top_ids=top_ids,
        top_probs_raw=raw,
        top_probs=after,
        proposed=torch.tensor([[-1, 33, 7, -1], [-1, -1, -1, -1]]),
        accepted=torch.tensor([[False, True, False, False], [False] * 4]),
        live=torch.tensor([[True, True, True, False], [True] * 4]),
    )


def plot_tokenizer():
    from lens import Tokenizer

    return Tokenizer.byte_level()


def _decode(i: int) -> str:
    """A cell's label: the token decoded alone, HTML-escaped, spaces shown as "␣"."""
    return plot._clean(plot_tokenizer().decode([i])).replace(" ", "\u2423") or "\u2205"


@pytest.mark.parametrize("which", ["after", "raw"])
def test_generation_trace_heatmap_matches_the_trace(which):
    tr = _trace()
    fig = plot.generation_trace(tr, plot_tokenizer(), which=which, title="trace")
    heat = fig.data[0]
    z = _z(heat)
    assert z.shape == (4, 4)  # the chosen row, then ranks 1..3; one column per step
    probs = (tr.top_probs if which == "after" else tr.top_probs_raw)[0].T.numpy()
    np.testing.assert_allclose(z[1:, :3], probs[:, :3], rtol=1e-6)
    chosen = tr.token_probs[0, :3].numpy() if which == "after" else [0.3, 0.6, np.nan]  # raw: from its rank
    np.testing.assert_allclose(z[0, :3], chosen, rtol=1e-6)  # step 2's token is outside the top 3: no raw prob
    assert np.isnan(z[:, 3]).all()  # after the EOS: blank
    text = [list(r) for r in heat.text]
    assert [r[:3] for r in text[1:]] == [[_decode(int(i)) for i in tr.top_ids[0, :3, y]] for y in range(3)]
    assert text[0][:3] == [_decode(int(t)) for t in tr.tokens[0, :3]] and text[0][3] == ""
    assert text[1][0] == "h" and text[3][0] == "\u2423"  # a space is made visible
    assert "p before filters: 0.3000" in heat.hovertext[0][0] and "p after filters: 0.4000" in heat.hovertext[0][0]
    assert "outside top-k" in heat.hovertext[0][2]
    assert list(fig.layout.yaxis.ticktext) == ["chosen", "1", "2", "3"] and fig.layout.title.text == "trace"
    assert (heat.zmin, heat.zmax) == (0.0, 1.0)
    marks = {t.name: t for t in fig.data[1:]}
    assert set(marks) == {"chosen", "proposal accepted", "proposal rejected"}
    assert list(marks["chosen"].x) == [0, 1] and list(marks["chosen"].y) == [2, 1]  # ranks of the chosen tokens
    accepted, rejected = marks["proposal accepted"], marks["proposal rejected"]
    assert [round(x) for x in accepted.x] == [1] and list(accepted.text) == ["step 1: proposed ! (accepted)"]
    assert [round(x) for x in rejected.x] == [2]
    assert list(rejected.text) == [f"step 2: proposed {_decode(7)} (rejected)"]


def test_generation_trace_rows_ids_and_no_proposals():
    tr = _trace()
    fig = plot.generation_trace(tr, row=1)  # no tokenizer: ids
    heat = fig.data[0]
    np.testing.assert_allclose(_z(heat)[1:], tr.top_probs[1].T.numpy(), rtol=1e-6)
    assert list(heat.text[1]) == ["104"] * 4 and list(heat.text[0]) == ["104"] * 4
    assert [t.name for t in fig.data] == ["trace", "chosen"]  # no speculative markers without proposals


def test_generation_trace_of_a_real_generation():
    import lens

    cfg = lens.TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=259, n_ctx=32)
    model = lens.HookedTransformer(cfg, tokenizer=lens.Tokenizer.byte_level(), seed=0).eval()
    out = model.generate("abab", 6, stop_at_eos=False, output_trace=True, trace_top_k=4, prompt_lookup_num_tokens=2)
    fig = plot.generation_trace(out.trace, model)  # a model: its tokenizer decodes
    heat = fig.data[0]
    np.testing.assert_allclose(_z(heat)[1:], out.trace.top_probs[0].T.numpy(), rtol=1e-6)
    np.testing.assert_allclose(_z(heat)[0], out.trace.token_probs[0].numpy(), rtol=1e-6)
    assert list(heat.text[0]) == [_decode(int(t)) for t in out.trace.tokens[0]]
    assert list(fig.data[1].x) == list(range(6)) and list(fig.data[1].y) == [1] * 6  # greedy: rank 1


def test_generation_trace_bad_inputs():
    tr = _trace()
    with pytest.raises(ValueError, match="row 2 out of range for a trace of 2 row"):
        plot.generation_trace(tr, row=2)
    with pytest.raises(ValueError, match="row -1 out of range"):
        plot.generation_trace(tr, row=-1)
    with pytest.raises(ValueError, match="which must be 'after' or 'raw', got 'before'"):
        plot.generation_trace(tr, which="before")
    with pytest.raises(ValueError, match="model_or_tokenizer must be a tokenizer"):
        plot.generation_trace(tr, object())
    with pytest.raises(TypeError, match="trace must be a GenerationTrace"):
        plot.generation_trace(torch.zeros(2, 3))
    from lens.generation.trace import TraceRecorder

    with pytest.raises(ValueError, match="no steps"):
        plot.generation_trace(TraceRecorder(3, 1, 10).finish())
