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
