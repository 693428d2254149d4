"""A standalone HTML feature browser for one SAE: ``feature_browser(model, sae, source, "features.html")``.

One file, plotly.js embedded (it opens offline, like :func:`lens.tools.plot.save_html`): an index of the features
(density, maximum activation, the top token; a search box filters by feature id or by the text of its top
tokens; clicking a row shows the feature) and, per feature, its top contexts with each token's background
coloured by the feature's activation there (whitespace shown as ``·`` ``↵`` ``⇥``, the exact string and id in
the tooltip), its logit effects (table and bar chart), its activation histogram, beside the SAE's density
histogram. The features' data are embedded once as JSON and a small script renders a feature when it is
selected, drawing its plotly figures then, so the file grows by a few kB per feature rather than by thousands of
figure divs. Same inputs, same bytes (sorted JSON, rounded numbers, content-derived ids).

>>> path = feature_browser(model, sae, tokens, "out/features.html", features=range(64), k=10)  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import torch
from plotly.offline import get_plotlyjs

from lens.sae.features import (
    HIST_BINS,
    HIST_LOG10,
    TopActivations,
    _check_features,
    _positive_int,
    density_histogram,
    logit_effects,
    token_strings,
    top_activations,
    visible,
)
from lens.tools.plot import figure_id


def _num(v: float) -> float | None:
    """A float rounded to 4 significant digits for the page (None for NaN)."""
    v = float(v)
    return None if math.isnan(v) else float(f"{v:.4g}")


def _page_data(model: Any, sae: Any, top: TopActivations, feats: list[int], n_logits: int, title: str) -> dict:
    rows = [top.row(f) for f in feats]
    effects = logit_effects(model, sae, feats, k=n_logits) if feats else []
    used: set[int] = set()
    features = []
    for f, i, eff in zip(feats, rows, effects, strict=True):
        examples = []
        for j in range(int(top.counts[i])):
            ids = top.windows[i, j].tolist()
            used.update(t for t in ids if t >= 0)
            examples.append([_num(top.values[i, j]), int(top.contexts[i, j]), int(top.positions[i, j]), ids,
                             [_num(a) for a in top.window_acts[i, j].tolist()]])  # fmt: skip
        pos = [[int(t), _num(v)] for t, v in zip(eff.top_tokens.tolist(), eff.top_values.tolist(), strict=True)]
        neg = [[int(t), _num(v)] for t, v in zip(eff.bottom_tokens.tolist(), eff.bottom_values.tolist(), strict=True)]
        used.update(t for t, _ in pos + neg)
        hist = top.hist[i]
        features.append({
            "id": f, "fires": int(top.fires[f]), "density": _num(top.density[f]), "max": _num(top.max_activation[f]),
            "ex": examples, "pos": pos, "neg": neg, "hist": [[int(b), int(hist[b])] for b in hist.nonzero()[:, 0]],
        })  # fmt: skip
    ids = sorted(used)
    vocab = {str(t): [visible(s), s] for t, s in zip(ids, token_strings(model, ids), strict=True)}
    density = density_histogram(top)
    return {
        "title": title,
        "hook_name": sae.hook_name,
        "d_sae": sae.d_sae,
        "architecture": getattr(getattr(sae, "cfg", None), "architecture", None),
        "total_tokens": top.total_tokens,
        "exclude_bos": top.exclude_bos,
        "window": list(top.context_window),
        "dead": int((top.fires == 0).sum()),
        "hist_log10": [HIST_LOG10[0], HIST_LOG10[1], HIST_BINS],
        "density_figure": json.loads(density.to_json()),
        "density_figure_id": figure_id(density, "density"),
        "vocab": vocab,
        "features": features,
    }


def _script_json(data: dict) -> str:
    """JSON safe inside a ``<script>`` element: ASCII only, and no ``<``, ``>``, ``&`` (no ``</script>``)."""
    text = json.dumps(data, ensure_ascii=True, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@torch.no_grad()
def feature_browser(
    model: Any,
    sae: Any,
    source: Any,
    path: str | pathlib.Path,
    features: Sequence[int] | torch.Tensor | None = None,
    k: int = 20,
    context_window: tuple[int, int] = (8, 4),
    batch_size: int = 8,
    exclude_bos: bool = True,
    n_logits: int = 10,
    title: str | None = None,
    result: TopActivations | None = None,
    **source_kwargs: Any,
) -> pathlib.Path:
    """Write the feature browser of ``sae`` (see the module docstring) to ``path``; returns the path.

    ``source``, ``features``, ``k``, ``context_window``, ``batch_size``, ``exclude_bos`` and ``source_kwargs``
    (``context_size``, ``prepend_bos``) are those of :func:`lens.sae.features.top_activations`; pass ``result`` (a
    :class:`TopActivations` of this SAE) to reuse a pass (``source`` is then not read; ``features`` must be among
    its features). ``n_logits``: promoted and suppressed tokens per feature. For a wide SAE, pick ``features``:
    each feature adds a few kB. Bad arguments raise before any forward.

    >>> feature_browser(model, sae, ["some text"] * 100, "sae.html", features=range(32),
    ...                 context_size=64)  # doctest: +SKIP
    """
    n_logits = _positive_int("n_logits", n_logits)
    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(f"path={str(path)!r} is a directory; give the HTML file to write")
    if sae.d_out != model.W_U.shape[0]:
        raise ValueError(f"logit effects need a decoder of width d_model={model.W_U.shape[0]}; the SAE writes "
                         f"{sae.d_out} at {sae.hook_name_out or sae.hook_name!r}")  # fmt: skip
    if result is None:
        top = top_activations(model, sae, source, features=features, k=k, context_window=context_window,
                              batch_size=batch_size, exclude_bos=exclude_bos, **source_kwargs)  # fmt: skip
        feats = top.features.tolist()
    else:
        if not isinstance(result, TopActivations):
            raise TypeError(f"result must be a TopActivations, got {type(result).__name__}")
        if result.hook_name != sae.hook_name or result.d_sae != sae.d_sae:
            raise ValueError(f"result is of an SAE at {result.hook_name!r} with d_sae={result.d_sae}, not this one "
                             f"({sae.hook_name!r}, d_sae={sae.d_sae})")  # fmt: skip
        top = result
        feats = top.features.tolist() if features is None else _check_features(features, sae.d_sae).tolist()
        missing = sorted(set(feats) - set(top.features.tolist()))
        if missing:
            raise ValueError(f"features {missing[:5]} are not in result (it holds {len(top.features)} features)")
    head = title if title is not None else f"SAE features: {sae.hook_name} (d_sae={sae.d_sae})"
    data = _page_data(model, sae, top, feats, n_logits, head)
    page = "".join([
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n",
        f"<title>{html.escape(head)}</title>\n<style>{_CSS}</style>\n",
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head><body>\n',
        _BODY.replace("{title}", html.escape(head)),
        f'<script type="application/json" id="lens-feature-data">{_script_json(data)}</script>\n',
        f"<script>{_APP}</script>\n</body></html>\n",
    ])  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


_CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222}
header{padding:8px 16px;border-bottom:1px solid #ddd}header h1{font-size:20px;margin:4px 0}
#layout{display:flex;align-items:flex-start}
#index{width:360px;flex:none;padding:8px;border-right:1px solid #ddd;height:calc(100vh - 90px);overflow:auto}
#index input[type=search]{width:100%;box-sizing:border-box;padding:4px}
#feature-table{border-collapse:collapse;width:100%;font-size:13px}
#feature-table td,#feature-table th{padding:2px 6px;text-align:left}
#feature-table tbody tr{cursor:pointer}#feature-table tbody tr:hover{background:#eef}
#feature-table tr.selected{background:#dde4ff}#feature-table tr.dead{color:#999}
main{flex:1;padding:8px 16px;min-width:0}
.figure{width:100%;height:360px}
.context{font-family:ui-monospace,monospace;font-size:14px;white-space:pre;margin:3px 0;overflow-x:auto}
.context .meta{color:#777;display:inline-block;width:170px}
.tok{padding:1px 0;border-radius:2px}.tok.hit{outline:2px solid #c40}.tok.none{color:#bbb}
.logits{border-collapse:collapse;font-size:13px;margin-bottom:8px}
.logits td{padding:1px 8px;font-family:ui-monospace,monospace}
.empty{color:#888;font-style:italic}
"""

_BODY = """<header><h1>{title}</h1><p id="summary"></p></header>
<div id="layout">
<aside id="index">
<input id="search" type="search" placeholder="filter: feature id or token text">
<label><input id="hide-dead" type="checkbox"> hide dead features</label>
<p id="shown"></p>
<table id="feature-table"><thead><tr><th>feature</th><th>density</th><th>max act</th><th>top token</th></tr></thead>
<tbody></tbody></table>
</aside>
<main>
<div id="density-figure" class="figure"></div>
<section id="feature-view" hidden>
<h2 id="feature-title"></h2><p id="feature-stats"></p>
<h3>Top activations</h3><div id="contexts"></div>
<h3>Logit effects (W_dec @ W_U)</h3><table id="logit-table" class="logits"></table>
<div id="logit-figure" class="figure"></div>
<h3>Activation histogram</h3><div id="hist-figure" class="figure"></div>
</section>
</main>
</div>
"""

_APP = r"""
(function(){
"use strict";
const D = JSON.parse(document.getElementById("lens-feature-data").textContent);
const byId = new Map(D.features.map(f => [f.id, f]));
const el = id => document.getElementById(id);
const show = t => (D.vocab[t] ? D.vocab[t][0] : (t < 0 ? "" : "#" + t));
const raw = t => (D.vocab[t] ? D.vocab[t][1] : "#" + t);
const fmt = v => (v === null ? "-" : Number(v).toPrecision(3));
const pct = v => (v === null ? "-" : (100 * v).toPrecision(3) + "%");
function cell(row, text){
  const td = document.createElement("td"); td.textContent = text; row.appendChild(td); return td;
}
function uniq(labels){
  const seen = new Set(labels); const ok = seen.size === labels.length && labels.every(s => s.length);
  return ok ? labels : labels.map((s, i) => i + ": " + s);
}
el("summary").textContent = D.hook_name + " | d_sae " + D.d_sae + (D.architecture ? " (" + D.architecture + ")" : "") +
  " | " + D.total_tokens + " tokens" + (D.exclude_bos ? " (BOS excluded)" : "") + " | " + D.dead +
  " dead features | " + D.features.length + " features listed";
const dens = el("density-figure"); dens.dataset.figure = D.density_figure_id;
Plotly.newPlot(dens, D.density_figure.data, D.density_figure.layout, {responsive: true});

const rows = new Map();
const tbody = document.querySelector("#feature-table tbody");
for (const f of D.features){
  const tr = document.createElement("tr"); tr.id = "feature-row-" + f.id; tr.dataset.feature = f.id;
  if (!f.fires) tr.classList.add("dead");
  cell(tr, String(f.id)); cell(tr, pct(f.density)); cell(tr, fmt(f.max));
  cell(tr, f.ex.length ? show(f.ex[0][3][D.window[0]]) : "");
  f.text = f.ex.map(e => e[3].map(raw).join("")).join("\n") + "\n" + f.pos.map(p => raw(p[0])).join("\n");
  tr.addEventListener("click", () => select(f.id));
  tbody.appendChild(tr); rows.set(f.id, tr);
}
function filter(){
  const q = el("search").value.trim(); const hide = el("hide-dead").checked; let n = 0;
  for (const f of D.features){
    const hit = (!hide || f.fires > 0) && (!q || (/^\d+$/.test(q) ? String(f.id).startsWith(q) : f.text.includes(q)));
    rows.get(f.id).hidden = !hit; n += hit;
  }
  el("shown").textContent = n + " of " + D.features.length + " features shown";
}
el("search").addEventListener("input", filter); el("hide-dead").addEventListener("change", filter); filter();

function contexts(f){
  const box = el("contexts"); box.replaceChildren();
  if (!f.ex.length){ const p = document.createElement("p"); p.className = "empty";
    p.textContent = "This feature never fired on the " + D.total_tokens + " tokens."; box.appendChild(p); return; }
  const top = f.ex[0][0] || 1;
  for (const [value, ctx, pos, toks, acts] of f.ex){
    const div = document.createElement("div"); div.className = "context";
    const meta = document.createElement("span"); meta.className = "meta";
    meta.textContent = fmt(value) + "  ctx " + ctx + " pos " + pos; div.appendChild(meta);
    toks.forEach((t, j) => {
      if (t < 0) return;
      const s = document.createElement("span"); s.className = "tok" + (j === D.window[0] ? " hit" : "");
      const a = acts[j]; const alpha = a === null ? 0 : Math.max(0, Math.min(1, a / top));
      s.style.background = "rgba(255,120,0," + alpha.toFixed(3) + ")";
      s.textContent = show(t); s.title = JSON.stringify(raw(t)) + " (id " + t + ", pos " + (pos - D.window[0] + j) +
        "): " + fmt(a);
      div.appendChild(s);
    });
    box.appendChild(div);
  }
}
function logits(f){
  const table = el("logit-table"); table.replaceChildren();
  const head = document.createElement("tr"); ["promoted", "", "suppressed", ""].forEach(h => cell(head, h));
  table.appendChild(head);
  for (let i = 0; i < Math.max(f.pos.length, f.neg.length); i++){
    const tr = document.createElement("tr"); const p = f.pos[i], n = f.neg[i];
    cell(tr, p ? show(p[0]) : "").title = p ? JSON.stringify(raw(p[0])) : ""; cell(tr, p ? fmt(p[1]) : "");
    cell(tr, n ? show(n[0]) : "").title = n ? JSON.stringify(raw(n[0])) : ""; cell(tr, n ? fmt(n[1]) : "");
    table.appendChild(tr);
  }
  const bar = (items, axis, colour) => ({type: "bar", orientation: "h", x: items.map(p => p[1]),
    y: uniq(items.map(p => show(p[0]))), xaxis: "x" + axis, yaxis: "y" + axis, marker: {color: colour},
    hovertemplate: "%{y}: %{x:.4g}<extra></extra>", showlegend: false});
  Plotly.react(el("logit-figure"), [bar(f.pos, "", "#2b7bba"), bar(f.neg, "2", "#d6404e")], {
    title: {text: "Feature " + f.id + ": logit effects"}, margin: {l: 110, r: 20, t: 90},
    xaxis: {domain: [0, 0.42]}, xaxis2: {domain: [0.58, 1]},
    yaxis: {type: "category", autorange: "reversed"}, yaxis2: {type: "category", autorange: "reversed", anchor: "x2"},
    annotations: [{text: "promoted", x: 0.21, y: 1.0, yanchor: "bottom", xref: "paper", yref: "paper",
                   showarrow: false},
                  {text: "suppressed", x: 0.79, y: 1.0, yanchor: "bottom", xref: "paper", yref: "paper",
                   showarrow: false}]},
    {responsive: true});
}
function histogram(f){
  const div = el("hist-figure");
  if (!f.hist.length){
    Plotly.purge(div); div.textContent = "no non-zero activations"; div.className = "empty"; return;
  }
  div.textContent = ""; div.className = "figure";
  const [lo, hi, bins] = D.hist_log10; const w = (hi - lo) / bins;
  const x = f.hist.map(h => lo + (h[0] + 0.5) * w);
  const decades = []; for (let d = Math.floor(Math.min(...x)); d <= Math.ceil(Math.max(...x)); d++) decades.push(d);
  Plotly.react(div, [{type: "bar", x: x, y: f.hist.map(h => h[1]), width: w, customdata: x.map(v => Math.pow(10, v)),
    hovertemplate: "activation ~%{customdata:.3g}: %{y} tokens<extra></extra>"}],
    {title: {text: "Feature " + f.id + ": activations > 0 (" + f.fires + " of " + D.total_tokens + " tokens)"},
     bargap: 0.02, xaxis: {title: {text: "activation (log scale)"}, tickvals: decades,
     ticktext: decades.map(d => String(Number(Math.pow(10, d).toPrecision(1))))},
     yaxis: {title: {text: "tokens"}}}, {responsive: true});
}
function select(id){
  const f = byId.get(id); if (!f) return;
  for (const tr of rows.values()) tr.classList.toggle("selected", Number(tr.dataset.feature) === id);
  el("feature-view").hidden = false;
  el("feature-title").textContent = "Feature " + f.id;
  el("feature-stats").textContent = "density " + pct(f.density) + " (" + f.fires + " of " + D.total_tokens +
    " tokens), max activation " + fmt(f.max);
  contexts(f); logits(f); histogram(f);
  try { history.replaceState(null, "", "#feature-" + id); } catch (e) { /* file: pages may refuse */ }
}
const m = /^#feature-(\d+)$/.exec(location.hash); if (m) select(Number(m[1]));
})();
"""
