"""Plotly figure builders for interpretability results.

Why: attention patterns, activation-patching grids, logit-lens tables and logit
attributions are the plots every circuit analysis needs. These helpers turn plain
tensors / arrays plus label lists into ``plotly.graph_objects.Figure`` objects, so
they work with any model (no dependency on a model class) and on any device/dtype.

Token labels are sanitised for plotly: ``<``, ``>`` and ``&`` are HTML-escaped (plotly
renders a subset of HTML), newlines are shown as ``\\n``, and if any label repeats
(or is empty) every label is prefixed with its position, e.g. ``"3: the"``, because
plotly's categorical axes silently merge equal categories.

Example::

    from lens import plot
    fig = plot.attention_patterns(cache["pattern", 0][0], ["<bos>", "The", " cat", " the"])
    plot.save_html(fig, "out/attn_L0.html")  # standalone: opens without network
"""

import hashlib
import html
import pathlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

__all__ = [
    "attention_patterns",
    "figure_id",
    "figures_to_html",
    "generation_trace",
    "imshow",
    "line",
    "logit_attribution_line",
    "logit_lens",
    "patching_heatmap",
    "save_html",
    "to_numpy",
    "unique_labels",
]

Array = Tensor | np.ndarray


# ----------------------------------------------------------------------------- helpers


def to_numpy(values: Array | Sequence) -> np.ndarray:
    """Convert a tensor (any device/dtype, e.g. bf16 on GPU) or array-like to a float numpy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def _clean(label: object) -> str:
    return html.escape(str(label), quote=False).replace("\r", "\\r").replace("\n", "\\n")


def unique_labels(labels: Sequence[object]) -> list[str]:
    """Sanitise labels for a plotly categorical axis, keeping their order and count.

    If the cleaned labels are already unique and non-empty they are returned as-is,
    otherwise every label becomes ``"{position}: {label}"`` so none get merged.

    >>> unique_labels(["the", "cat", "the"])
    ['0: the', '1: cat', '2: the']
    """
    cleaned = [_clean(s) for s in labels]
    if len(set(cleaned)) == len(cleaned) and all(cleaned):
        return cleaned
    return [f"{i}: {s}" for i, s in enumerate(cleaned)]


def _check_ndim(name: str, arr: np.ndarray, allowed: tuple[int, ...], dims: str) -> None:
    if arr.ndim not in allowed:
        raise ValueError(f"{name} must have {dims} but has {arr.ndim} dimension(s) (shape {tuple(arr.shape)})")


def _check_len(name: str, labels: Sequence | None, expected: int, what: str) -> None:
    if labels is not None and len(labels) != expected:
        raise ValueError(f"{name} has {len(labels)} entries but {what} has length {expected}")


def _finish(fig: go.Figure, title: str | None, x_title: str | None = None, y_title: str | None = None):
    if title is not None:
        fig.update_layout(title=title)
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    return fig


# ----------------------------------------------------------------------------- generic


def line(
    values: Float[Array, "*line point"],
    x: Sequence | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    **layout,
) -> go.Figure:
    """Line plot of a 1D array, or one line per row of a 2D array (TransformerLens-tutorial style).

    ``x`` gives the x value (or category label) of each point; ``labels`` names each line.
    String ``x`` labels are made unique so plotly does not merge repeated categories.

    >>> fig = line(torch.randn(3, 10), labels=["a", "b", "c"], title="three lines")
    """
    arr = to_numpy(values)
    _check_ndim("values", arr, (1, 2), "1 (point) or 2 (line point) dimensions")
    rows = arr[None] if arr.ndim == 1 else arr
    _check_len("x", x, rows.shape[1], "the point dimension of values")
    _check_len("labels", labels, rows.shape[0], "the line dimension of values")
    categorical = x is not None and any(isinstance(v, str) for v in x)
    xs = unique_labels(x) if categorical else (list(range(rows.shape[1])) if x is None else list(x))
    names = [str(s) for s in labels] if labels is not None else [str(i) for i in range(rows.shape[0])]
    fig = go.Figure()
    for name, row in zip(names, rows):
        fig.add_trace(go.Scatter(x=xs, y=row, mode="lines+markers", name=name))
    fig.update_layout(showlegend=rows.shape[0] > 1 or labels is not None, **layout)
    if categorical:
        fig.update_xaxes(type="category")
    return _finish(fig, title, x_title, y_title)


def imshow(
    values: Float[Array, "row col"],
    x: Sequence | None = None,
    y: Sequence | None = None,
    title: str | None = None,
    zmid: float | None = 0.0,
    x_title: str | None = None,
    y_title: str | None = None,
    colorscale: str = "RdBu",
    **layout,
) -> go.Figure:
    """Heatmap of a 2D array with row 0 at the top, like ``px.imshow`` in TransformerLens tutorials.

    With ``zmid`` set (default 0) the diverging ``colorscale`` is centred there, so
    positive and negative effects get opposite colours; pass ``zmid=None`` to disable.
    ``x`` / ``y`` label columns / rows and are shown as unique categories.

    >>> fig = imshow(torch.randn(12, 12), x=[f"H{h}" for h in range(12)], y_title="Layer")
    """
    arr = to_numpy(values)
    _check_ndim("values", arr, (2,), "2 dimensions (row col)")
    _check_len("x", x, arr.shape[1], "the column dimension of values")
    _check_len("y", y, arr.shape[0], "the row dimension of values")
    xs = unique_labels(x if x is not None else range(arr.shape[1]))
    ys = unique_labels(y if y is not None else range(arr.shape[0]))
    fig = go.Figure(
        go.Heatmap(
            z=arr,
            x=xs,
            y=ys,
            zmid=zmid,
            colorscale=colorscale,
            hovertemplate="%{y}, %{x}: %{z:.4g}<extra></extra>",
        )
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_layout(**layout)
    return _finish(fig, title, x_title, y_title)


# ----------------------------------------------------------------------------- interpretability


def attention_patterns(
    pattern: Float[Array, "*head query key"],
    str_tokens: Sequence[str],
    heads: Sequence[int] | None = None,
    head_labels: Sequence[str] | None = None,
    title: str | None = None,
    mode: Literal["slider", "grid"] = "slider",
    cols: int = 4,
) -> go.Figure:
    """Attention-pattern heatmaps (query on y, key on x, colour range 0..1), one per head.

    ``pattern`` is ``[head, query, key]`` (e.g. ``cache["pattern", layer][0]``) or a single
    ``[query, key]`` map. ``heads`` picks which heads to show (default all), ``head_labels``
    names the chosen heads (default ``"Head h"``). ``mode="slider"`` stacks the heads in one
    plot with a slider to switch between them; ``mode="grid"`` draws subplots, ``cols`` per row.
    Hover shows the query token, key token and attention weight.

    >>> fig = attention_patterns(torch.rand(2, 3, 3), ["<bos>", "a", "a"], heads=[1])
    """
    arr = to_numpy(pattern)
    _check_ndim("pattern", arr, (2, 3), "2 (query key) or 3 (head query key) dimensions")
    if arr.ndim == 2:
        arr = arr[None]
    n_heads, n_q, n_k = arr.shape
    _check_len("str_tokens", str_tokens, n_q, "the query dimension of pattern")
    _check_len("str_tokens", str_tokens, n_k, "the key dimension of pattern")
    heads = list(range(n_heads)) if heads is None else [int(h) for h in heads]
    if not heads:
        raise ValueError("heads must select at least one head")
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise ValueError(f"heads {bad} out of range for pattern with {n_heads} heads")
    _check_len("head_labels", head_labels, len(heads), "heads (the selected heads)")
    names = [str(s) for s in head_labels] if head_labels is not None else [f"Head {h}" for h in heads]
    toks = unique_labels(str_tokens)
    if mode not in ("slider", "grid"):
        raise ValueError(f"mode must be 'slider' or 'grid', got {mode!r}")

    def heatmap(h: int, name: str, visible: bool = True) -> go.Heatmap:
        return go.Heatmap(
            z=arr[h],
            x=toks,
            y=toks,
            name=name,
            visible=visible,
            coloraxis="coloraxis",
            hovertemplate=f"Query: %{{y}}<br>Key: %{{x}}<br>Weight: %{{z:.3f}}<extra>{name}</extra>",
        )

    if mode == "grid":
        cols = max(1, min(cols, len(heads)))
        rows = -(-len(heads) // cols)
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, horizontal_spacing=0.06)
        for i, (h, name) in enumerate(zip(heads, names)):
            fig.add_trace(heatmap(h, name), row=i // cols + 1, col=i % cols + 1)
        fig.update_layout(height=max(350, 320 * rows), width=max(450, 320 * cols))
    else:
        fig = go.Figure([heatmap(h, name, visible=i == 0) for i, (h, name) in enumerate(zip(heads, names))])
        if len(heads) > 1:
            steps = [
                dict(method="restyle", label=name, args=[{"visible": [j == i for j in range(len(heads))]}])
                for i, name in enumerate(names)
            ]
            fig.update_layout(sliders=[dict(active=0, currentvalue={"prefix": "Head: "}, steps=steps)])
    fig.update_layout(coloraxis=dict(colorscale="Blues", cmin=0.0, cmax=1.0))
    fig.update_xaxes(type="category", title_text="Key")
    fig.update_yaxes(type="category", autorange="reversed", title_text="Query")
    return _finish(fig, title)


def patching_heatmap(
    values: Float[Array, "layer pos_or_head"],
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    title: str | None = None,
    x_title: str = "Position",
    y_title: str = "Layer",
    zmid: float = 0.0,
) -> go.Figure:
    """Activation-patching result as a diverging (RdBu) heatmap centred at ``zmid``.

    Works for ``[layer, pos]`` results (``x_labels`` = str tokens, made unique) and
    ``[layer, head]`` results (pass ``x_title="Head"``; labels default to indices).

    >>> fig = patching_heatmap(torch.randn(2, 3), ["<bos>", " the", " the"], title="resid_pre")
    """
    arr = to_numpy(values)
    _check_ndim("values", arr, (2,), "2 dimensions (layer pos) or (layer head)")
    _check_len("x_labels", x_labels, arr.shape[1], "the second (pos/head) dimension of values")
    _check_len("y_labels", y_labels, arr.shape[0], "the first (layer) dimension of values")
    return imshow(arr, x=x_labels, y=y_labels, title=title, zmid=zmid, x_title=x_title, y_title=y_title)


def logit_lens(
    predictions: Sequence[Sequence[str]],
    probs: Float[Array, "layer pos"],
    str_tokens: Sequence[str],
    layer_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Logit-lens table: cell colour = probability (0..1), cell text = predicted token.

    ``predictions[layer][pos]`` is the top token decoded from the residual stream at that
    layer and position, ``probs[layer, pos]`` its probability; input tokens label the x axis.

    >>> fig = logit_lens([["a", "b"], ["c", "d"]], torch.rand(2, 2), ["<bos>", "x"])
    """
    arr = to_numpy(probs)
    _check_ndim("probs", arr, (2,), "2 dimensions (layer pos)")
    n_layers, n_pos = arr.shape
    _check_len("predictions", predictions, n_layers, "the layer dimension of probs")
    for i, row in enumerate(predictions):
        _check_len(f"predictions[{i}]", row, n_pos, "the pos dimension of probs")
    _check_len("str_tokens", str_tokens, n_pos, "the pos dimension of probs")
    _check_len("layer_labels", layer_labels, n_layers, "the layer dimension of probs")
    text = [[_clean(t) for t in row] for row in predictions]
    fig = go.Figure(
        go.Heatmap(
            z=arr,
            x=unique_labels(str_tokens),
            y=unique_labels(layer_labels if layer_labels is not None else range(n_layers)),
            text=text,
            texttemplate="%{text}",
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            hovertemplate="Layer %{y}, input %{x}<br>Prediction: %{text}<br>Prob: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return _finish(fig, title, "Input token", "Layer")


def logit_attribution_line(
    values: Float[Array, "*component_and_other"],
    labels: Sequence[str],
    title: str | None = None,
    y_title: str = "Logit attribution",
    line_labels: Sequence[str] | None = None,
    component_dim: int | None = None,
) -> go.Figure:
    """Line plot of logit attribution across residual-stream components.

    ``values`` is ``[component]`` (e.g. accumulated-resid or decomposed-resid attribution
    to a logit difference), or 2D ``[component, pos]`` / ``[batch, component]`` giving one
    line per pos / batch item. The component dimension is the one whose size equals
    ``len(labels)``; when both do, pass ``component_dim`` (0 or 1). ``labels`` label the x axis.

    >>> fig = logit_attribution_line(torch.randn(3), ["embed", "0_attn_out", "0_mlp_out"])
    """
    arr = to_numpy(values)
    _check_ndim("values", arr, (1, 2), "1 (component) or 2 (component pos / batch component) dimensions")
    if arr.ndim == 1:
        _check_len("labels", labels, arr.shape[0], "the component dimension of values")
        rows = arr[None]
    else:
        if component_dim is None:
            matches = [d for d in (0, 1) if arr.shape[d] == len(labels)]
            if not matches:
                raise ValueError(f"labels has {len(labels)} entries but values has shape {tuple(arr.shape)}")
            if len(matches) == 2:
                raise ValueError(
                    f"values has shape {tuple(arr.shape)}: both dims match {len(labels)} labels; "
                    "pass component_dim=0 or 1"
                )
            component_dim = matches[0]
        if component_dim not in (0, 1):
            raise ValueError(f"component_dim must be 0 or 1, got {component_dim}")
        _check_len("labels", labels, arr.shape[component_dim], "the component dimension of values")
        rows = arr.T if component_dim == 0 else arr
    fig = line(rows, x=[str(s) for s in labels], labels=line_labels, title=title)
    fig.update_xaxes(type="category", title_text="Component")
    fig.update_yaxes(title_text=y_title)
    for trace in fig.data:
        trace.hovertemplate = f"%{{x}}: %{{y:.4g}}<extra>{trace.name}</extra>"
    return fig


def _decoder(model_or_tokenizer: object):
    """``id -> label``: the tokenizer's ``decode([id])`` (memoised), or the id itself without a tokenizer."""
    if model_or_tokenizer is None:
        return str
    tok = model_or_tokenizer
    if not callable(getattr(tok, "decode", None)):
        tok = getattr(model_or_tokenizer, "tokenizer", None)
    if not callable(getattr(tok, "decode", None)):
        raise ValueError(
            "model_or_tokenizer must be a tokenizer (with decode) or a model that has one, got "
            f"{type(model_or_tokenizer).__name__} without a tokenizer"
        )
    seen: dict[int, str] = {}

    def decode(i: int) -> str:
        if i not in seen:  # spaces shown as "␣" so that whitespace tokens are visible in a cell
            try:
                seen[i] = _clean(tok.decode([i])).replace(" ", "\u2423") or "\u2205"
            except ValueError:  # an id past the tokenizer's vocabulary (a padded unembedding)
                seen[i] = str(i)
        return seen[i]

    return decode


def generation_trace(
    trace,
    model_or_tokenizer: object = None,
    row: int = 0,
    which: Literal["after", "raw"] = "after",
    title: str | None = None,
) -> go.Figure:
    """Token-by-step heatmap of one row of a ``generate(..., output_trace=True)`` trace.

    x = generation step, y = the chosen token (top row) then the rank 1..k of the alternatives (the most
    likely tokens before the sampler's filters); colour = probability after the filters (``which="after"``,
    0 where a filter removed the token) or before them (``which="raw"``); cell text = the token, decoded
    with ``model_or_tokenizer`` (a tokenizer, or a model with one; else token ids). The chosen token is
    also outlined at its rank; under speculative decoding the draft's proposals are marked on the chosen
    row (a circle where accepted, a cross where rejected). Hover shows the token and both probabilities.
    Steps after the row's EOS are left blank.

    >>> out = model.generate("def ", 20, do_sample=True, top_k=5, seed=0, output_trace=True)
    >>> fig = generation_trace(out.trace, model, which="raw")
    """
    if not hasattr(trace, "top_ids") or not hasattr(trace, "token_probs"):
        raise TypeError(f"trace must be a GenerationTrace (generate(..., output_trace=True)), got {type(trace)}")
    if which not in ("after", "raw"):
        raise ValueError(f"which must be 'after' or 'raw', got {which!r}")
    batch, steps, k = trace.top_ids.shape
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < batch:
        raise ValueError(f"row {row!r} out of range for a trace of {batch} row(s)")
    if steps == 0:
        raise ValueError("the trace has no steps (max_new_tokens=0): nothing to plot")
    decode = _decoder(model_or_tokenizer)
    ids = trace.top_ids[row].T.tolist()  # [k][step]
    raw, after = to_numpy(trace.top_probs_raw[row]).T, to_numpy(trace.top_probs[row]).T
    tokens, live = trace.tokens[row].tolist(), trace.live[row].tolist()
    proposed, accepted = trace.proposed[row].tolist(), trace.accepted[row].tolist()
    chosen_after = to_numpy(trace.token_probs[row])
    rank = [next((r for r in range(k) if ids[r][s] == tokens[s]), None) for s in range(steps)]
    chosen_raw = np.array([raw[r, s] if r is not None else np.nan for s, r in enumerate(rank)])
    z = np.vstack([chosen_after if which == "after" else chosen_raw, after if which == "after" else raw])
    text = [[decode(t) for t in tokens]] + [[decode(i) for i in line] for line in ids]
    before = np.vstack([chosen_raw, raw])
    later = np.vstack([chosen_after, after])
    hover = [
        [
            f"step {s}, {'chosen' if y == 0 else f'rank {y}'}: {text[y][s]}<br>"
            f"p before filters: {'outside top-k' if np.isnan(before[y, s]) else f'{before[y, s]:.4f}'}<br>"
            f"p after filters: {later[y, s]:.4f}"
            for s in range(steps)
        ]
        for y in range(k + 1)
    ]
    for s in range(steps):
        if not live[s]:  # after the row's EOS
            z[:, s] = np.nan
            for y in range(k + 1):
                text[y][s], hover[y][s] = "", f"step {s}: after EOS"
    ys = list(range(k + 1))
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(steps)),
            y=ys,
            text=text,
            texttemplate="%{text}",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            colorbar=dict(title="p " + ("after" if which == "after" else "before")),
            name="trace",
        )
    )
    at = [(s, r + 1) for s, r in enumerate(rank) if r is not None and live[s]]
    fig.add_trace(
        go.Scatter(
            x=[s for s, _ in at], y=[y for _, y in at], mode="markers", name="chosen",
            marker=dict(symbol="square-open", size=26, color="orange", line=dict(width=2)), hoverinfo="skip",
        )
    )  # fmt: skip
    for name, keep, symbol, colour in (("accepted", True, "circle-open", "green"), ("rejected", False, "x", "red")):
        where = [s for s in range(steps) if live[s] and proposed[s] >= 0 and bool(accepted[s]) == keep]
        if where:
            fig.add_trace(
                go.Scatter(  # in the chosen cell's top right corner, clear of its text
                    x=[s + 0.32 for s in where], y=[-0.3] * len(where), mode="markers", name=f"proposal {name}",
                    marker=dict(symbol=symbol, size=8, color=colour, line=dict(width=2, color=colour)),
                    text=[f"step {s}: proposed {decode(proposed[s])} ({name})" for s in where],
                    hovertemplate="%{text}<extra></extra>",
                )
            )  # fmt: skip
    fig.update_yaxes(tickvals=ys, ticktext=["chosen"] + [str(y) for y in ys[1:]], range=[k + 0.5, -0.5])
    fig.update_xaxes(range=[-0.5, steps - 0.5], tickmode="linear" if steps <= 40 else "auto")
    legend = dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0)
    fig.update_layout(height=180 + 34 * (k + 1), width=max(600, 160 + 40 * steps), legend=legend)
    return _finish(fig, title, "Generation step", "Rank")


# ----------------------------------------------------------------------------- export


def figure_id(fig: go.Figure, salt: str = "") -> str:
    """A div id derived from the figure's content (plotly picks a random one), so that the same figure is
    written as the same bytes every time: a seeded run's HTML files are byte-identical."""
    digest = hashlib.sha256((salt + "|" + fig.to_json()).encode()).hexdigest()
    return f"lens-fig-{digest[:16]}"


def save_html(fig: go.Figure, path: str | pathlib.Path) -> pathlib.Path:
    """Write ``fig`` as a standalone HTML page with plotly.js embedded (opens offline).

    Parent directories are created. Returns the written path. The page's bytes depend only on the figure
    (a content-derived div id, see :func:`figure_id`).

    >>> save_html(imshow(torch.randn(2, 2)), "out/fig.html")
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True, div_id=figure_id(fig))
    return path


def figures_to_html(figs: Sequence[go.Figure], path: str | pathlib.Path, title: str | None = None) -> pathlib.Path:
    """Write several figures into one standalone report page, embedding plotly.js exactly once.

    Each figure becomes a ``<div>`` in order; ``title`` becomes the page title and heading. The same figures
    give the same bytes (content-derived div ids, see :func:`figure_id`).

    >>> figures_to_html([fig_attn, fig_patch], "out/report.html", title="IOI circuit")
    """
    figs = list(figs)
    if not figs:
        raise ValueError("figs is empty: need at least one figure")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = html.escape(title) if title is not None else "lens figures"
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{head}</title></head><body>",
    ]
    if title is not None:
        parts.append(f"<h1>{head}</h1>")
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=figure_id(fig, str(i))))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
