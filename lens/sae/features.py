"""Feature views of an SAE: top-activating contexts, feature density, logit effects, and their plotly figures.

:func:`top_activations` streams a corpus through the model (``run_with_cache`` with ``names_filter`` and
``stop_at_layer``, nothing attached) or reads an activation store, encodes each batch with ``sae.encode`` and
merges it into a running top-``k`` per feature: memory is ``O(features * k * window)`` plus one batch, never the
corpus's activations. The same pass counts, for every feature, the tokens it fires on (activation > 0), its
maximum and a log-spaced histogram of its non-zero values, so :func:`feature_density` needs no second pass.

Ranking: by activation, highest first; equal activations in (context, position) order, so the result depends
neither on ``batch_size`` nor on the order batches arrive in. Only tokens where the feature fires (> 0) are
ranked: a feature that fires on fewer than ``k`` tokens has empty slots (value NaN, context -1).

BOS: with ``exclude_bos=True`` (default, as :func:`lens.sae.evaluate`) position 0 is left out (of the ranking,
the counts and the histogram) where it holds the tokenizer's BOS token; windows still show it.

Rows to contexts: a ``[batch, pos]`` token tensor's context ``i`` is row ``i``; text is packed by
:class:`lens.store.TokenSource` (context ``i`` is its ``i``-th context); an activation store's row holds
``store.index[row] = (context, position)`` and its rows come in whole contexts of the harvest's kept positions,
so a window is read from the neighbouring rows of the same context (a position the harvest did not keep, e.g.
BOS with its ``exclude_bos``, shows as token -1).

>>> top = top_activations(model, sae, tokens, k=10, context_window=(8, 4))        # doctest: +SKIP
>>> top.values[0], top.contexts[0], top.positions[0]   # feature top.features[0]  # doctest: +SKIP
>>> effects = logit_effects(model, sae, 3, k=10)                                   # doctest: +SKIP
>>> density_histogram(top).show()                                                  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from lens.sae.attach import _expected_width
from lens.store.sources import TokenSource
from lens.tools.plot import to_numpy, unique_labels

HIST_LOG10 = (-4.0, 4.0)  # activation histogram: log10 range (values outside go to the end bins)
HIST_BINS = 80  # 0.1 decade per bin
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_VISIBLE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}
_LOGIT_CHUNK = 256  # features per W_dec @ W_U product


@dataclass
class TopActivations:
    """What :func:`top_activations` found: for each of ``features``, its ``k`` highest activations (highest first)
    with where they are and a token window around each, plus per-feature counts over the whole pass.

    ``windows[i, j]`` are the token ids of positions ``positions[i, j] - before .. positions[i, j] + after``
    (``before, after = context_window``; the hit is at index ``before``), -1 outside the context or not stored;
    ``window_acts[i, j]`` the feature's activation at those tokens (NaN where the token is -1).
    ``fires``, ``max_activation`` cover all ``d_sae`` features; ``hist`` the requested ones (bins of
    :attr:`hist_edges`, log-spaced).
    """

    hook_name: str
    d_sae: int
    features: Int[Tensor, " feature"]
    values: Float[Tensor, "feature k"]
    contexts: Int[Tensor, "feature k"]
    positions: Int[Tensor, "feature k"]
    windows: Int[Tensor, "feature k window"]
    window_acts: Float[Tensor, "feature k window"]
    fires: Int[Tensor, " d_sae"]
    max_activation: Float[Tensor, " d_sae"]
    hist: Int[Tensor, "feature bin"]
    total_tokens: int
    context_window: tuple[int, int]
    exclude_bos: bool

    @property
    def k(self) -> int:
        return self.values.shape[1]

    @property
    def density(self) -> Float[Tensor, " d_sae"]:
        """The fraction of the ``total_tokens`` on which each feature fired (NaN for no tokens)."""
        return self.fires.double() / self.total_tokens if self.total_tokens else torch.full((self.d_sae,), math.nan)

    @property
    def counts(self) -> Int[Tensor, " feature"]:
        """How many of the ``k`` slots each requested feature filled."""
        return (self.contexts >= 0).sum(1)

    @property
    def hist_edges(self) -> Float[Tensor, " edge"]:
        return torch.logspace(HIST_LOG10[0], HIST_LOG10[1], HIST_BINS + 1, dtype=torch.float64)

    def row(self, feature: int) -> int:
        """The index of ``feature`` in :attr:`features` (ValueError if it was not requested)."""
        hit = (self.features == int(feature)).nonzero()
        if hit.numel() == 0:
            raise ValueError(f"feature {feature} is not among the {len(self.features)} features of this result")
        return int(hit[0, 0])

    def examples(self, feature: int) -> list[dict[str, Any]]:
        """The filled slots of ``feature``: ``{"value", "context", "position", "tokens", "acts"}`` each."""
        i = self.row(feature)
        return [
            {
                "value": float(self.values[i, j]),
                "context": int(self.contexts[i, j]),
                "position": int(self.positions[i, j]),
                "tokens": self.windows[i, j].tolist(),
                "acts": self.window_acts[i, j].tolist(),
            }
            for j in range(int(self.counts[i]))
        ]


@dataclass
class LogitEffects:
    """The tokens whose logits a feature's decoder direction raises (``top_*``) and lowers (``bottom_*``, most
    negative first): ``values = W_dec[feature] @ W_U`` at those token ids; ``*_strings`` are the decoded tokens."""

    feature: int
    top_tokens: Int[Tensor, " k"]
    top_values: Float[Tensor, " k"]
    top_strings: list[str]
    bottom_tokens: Int[Tensor, " k"]
    bottom_values: Float[Tensor, " k"]
    bottom_strings: list[str]


# -- token strings ------------------------------------------------------------------------------------------
def token_strings(model: Any, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own; a byte-level tokenizer's lone non-ASCII byte shows as ``<0xNN>`` (not U+FFFD),
    a model without a tokenizer gives ``#id``.

    >>> token_strings(model, [256, 104, 0xC3])          # doctest: +SKIP
    ['<|bos|>', 'h', '<0xC3>']
    """
    ids = [int(i) for i in ids]
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [f"#{i}" for i in ids]
    out = tok.token_strings(ids)
    if getattr(tok, "is_byte_level", False):
        out = [f"<0x{i:02X}>" if i < 256 and s == "\ufffd" else s for i, s in zip(ids, out, strict=True)]
    return out


def visible(text: str) -> str:
    """``text`` with whitespace and control characters made visible: space ``·``, newline ``↵``, tab ``⇥``,
    others as Unicode control pictures.

    >>> visible(" a\\n")
    '·a↵'
    """
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 0x20:
            out.append(chr(0x2400 + ord(ch)))
        elif ord(ch) == 0x7F:
            out.append("\u2421")
        else:
            out.append(ch)
    return "".join(out)


# -- validation ---------------------------------------------------------------------------------------------
def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return int(value)


def _check_features(features: Any, d_sae: int) -> Tensor:
    if features is None:
        return torch.arange(d_sae)
    if isinstance(features, (int, np.integer)) and not isinstance(features, bool):
        features = [features]
    t = torch.as_tensor(features)
    if t.ndim == 0:
        t = t[None]
    if t.numel() and (t.dtype.is_floating_point or t.dtype == torch.bool or t.ndim != 1):
        raise TypeError(f"features must be a 1-d list of int feature ids, got {features!r}")
    t = t.long().reshape(-1)
    bad = t[(t < 0) | (t >= d_sae)]
    if bad.numel():
        raise ValueError(
            f"feature ids {bad[:5].tolist()} are out of range: the SAE has d_sae={d_sae} features [0, {d_sae})"
        )
    if t.unique().numel() != t.numel():
        raise ValueError(f"features={t.tolist()[:10]} names a feature twice")
    return t


def _check_window(context_window: Any) -> tuple[int, int]:
    ok = isinstance(context_window, (tuple, list)) and len(context_window) == 2
    if ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in context_window):
        return int(context_window[0]), int(context_window[1])
    raise ValueError(f"context_window={context_window!r} must be (tokens before, tokens after), two ints >= 0")


def _check_hooks(model: Any, sae: Any) -> None:
    for name, width in ((sae.hook_name, sae.d_in), (getattr(sae, "hook_name_out", None), sae.d_out)):
        if name is None:
            continue
        if name not in model.hook_dict:
            raise ValueError(f"the SAE's hook {name!r} is not a hook of the model ({model.cfg.n_layers} layers)")
        expected = _expected_width(model, name, sae.cfg.reshape_activations)
        if expected is not None and expected[0] != width:
            raise ValueError(
                f"the SAE's width {width} at {name!r} does not match the model's {expected[0]} ({expected[1]})"
            )


def _is_store(source: Any) -> bool:
    return all(hasattr(source, a) for a in ("identity", "index", "tokens", "hooks"))


# -- sources: batches of (acts input [B, R, d_in], tokens [B, R], context numbers [B], positions [R]) -----------
def _stop_layer(model: Any, hook: str) -> int | None:
    m = _BLOCK.match(hook)
    return int(m.group(1)) + 1 if m else None


def _model_batches(model: Any, sae: Any, contexts: Iterator[tuple[Tensor, Tensor]]) -> Iterator[tuple]:
    hook = sae.hook_name
    name = f"{hook}.hook_sae_input" if f"{hook}.hook_sae_input" in model.hook_dict else hook  # an attached SAE
    stop = _stop_layer(model, hook)
    device = next(model.parameters()).device
    for numbers, tokens in contexts:
        _, cache = model.run_with_cache(tokens.to(device), names_filter=[name], stop_at_layer=stop)
        x = cache[name]
        del cache
        yield x, tokens, numbers, torch.arange(tokens.shape[1])


def _tensor_contexts(tokens: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        yield torch.arange(start, start + batch.shape[0]), batch


def _source_contexts(src: Any, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    numbers, rows = [], []
    for i, ids in src.contexts():
        numbers.append(i)
        rows.append(np.asarray(ids, dtype=np.int64))
        if len(rows) == batch_size:
            yield torch.tensor(numbers), torch.from_numpy(np.stack(rows))
            numbers, rows = [], []
    if rows:
        yield torch.tensor(numbers), torch.from_numpy(np.stack(rows))


def _store_layout(store: Any) -> Tensor:
    """The positions each context has rows for (the harvest's kept positions)."""
    kept = store.identity.get("kept_positions")
    if kept is None:  # read the first context's rows
        first = store.index[: min(len(store), 1 << 16)]
        kept = first[first[:, 0] == first[0, 0], 1].tolist()
    return torch.tensor(kept, dtype=torch.long)


def _store_batches(store: Any, hook: str, batch_size: int) -> Iterator[tuple]:
    positions = _store_layout(store)
    per = len(positions)
    if len(store) % per:
        raise ValueError(f"the store has {len(store)} rows, not a whole number of contexts of {per} positions")
    column, step = store[hook], batch_size * per
    for lo in range(0, len(store), step):
        hi = min(lo + step, len(store))
        index = store.index[lo:hi].reshape(-1, per, 2)
        if not (torch.equal(index[:, :, 1], positions.expand(index.shape[0], -1)) and
                bool((index[:, :, 0] == index[:, :1, 0]).all())):  # fmt: skip
            raise ValueError(f"store rows {lo}..{hi} are not whole contexts of positions {positions.tolist()[:8]}...")
        x = column[lo:hi].reshape(index.shape[0], per, -1)
        yield x, store.tokens[lo:hi].reshape(-1, per), index[:, 0, 0].clone(), positions


# -- the running top-k -------------------------------------------------------------------------------------------
def _lexsort(keys: list[Tensor]) -> Tensor:
    """The order sorting by ``keys[0]``, then ``keys[1]``, ... (ascending; stable sorts, least significant first)."""
    order = torch.arange(keys[0].numel(), device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


class _Running:
    """Per-feature top-k state merged batch by batch (see the module docstring for the ranking)."""

    def __init__(self, features: Tensor, d_sae: int, k: int, window: tuple[int, int], device: Any, dtype: Any):
        n, w = len(features), window[0] + window[1] + 1
        self.features, self.k, self.window, self.all = features.to(device), k, window, len(features) == d_sae
        self.all = self.all and bool((features == torch.arange(d_sae)).all())
        self.vals = torch.full((n, k), -math.inf, device=device, dtype=dtype)
        self.ctx = torch.full((n, k), -1, device=device, dtype=torch.long)
        self.pos = torch.full((n, k), -1, device=device, dtype=torch.long)
        self.win = torch.full((n, k, w), -1, device=device, dtype=torch.long)
        self.win_acts = torch.full((n, k, w), math.nan, device=device, dtype=dtype)
        self.hist = torch.zeros((n, HIST_BINS), device=device, dtype=torch.long)
        self.fires = torch.zeros(d_sae, device=device, dtype=torch.long)
        self.max = torch.zeros(d_sae, device=device, dtype=dtype)
        self.total = 0

    def update(self, acts: Tensor, tokens: Tensor, ctx: Tensor, positions: Tensor, keep: Tensor) -> None:
        b, r, d = acts.shape
        rows = keep.reshape(-1).nonzero().squeeze(1)
        a = acts.reshape(b * r, d)[rows]
        self.total += rows.numel()
        if rows.numel() == 0:
            return
        self.fires += (a > 0).sum(0)
        self.max = torch.maximum(self.max, a.max(0).values)
        n = len(self.features)
        if n == 0:
            return
        sub = a if self.all else a[:, self.features]
        fr, ff = (sub > 0).nonzero(as_tuple=True)
        if fr.numel():
            logs = torch.log10(sub[fr, ff].double())
            width = (HIST_LOG10[1] - HIST_LOG10[0]) / HIST_BINS
            bins = ((logs - HIST_LOG10[0]) / width).floor().clamp(0, HIST_BINS - 1).long()
            self.hist += torch.bincount(ff * HIST_BINS + bins, minlength=n * HIST_BINS).view(n, HIST_BINS)
        threshold = sub.topk(min(self.k, sub.shape[0]), dim=0).values[-1]
        cr, cf = ((sub >= threshold) & (sub > 0)).nonzero(as_tuple=True)  # ties at the threshold all kept here
        grid = rows[cr]
        cb, cs = grid // r, grid % r
        c_pos = positions[cs]
        before, after = self.window
        q = c_pos[:, None] + torch.arange(-before, after + 1, device=acts.device)
        lut = torch.full((int(positions.max()) + 1,), -1, dtype=torch.long, device=acts.device)
        lut[positions] = torch.arange(r, device=acts.device)
        slot = lut[q.clamp(0, lut.numel() - 1)]
        ok = (q >= 0) & (q < lut.numel()) & (slot >= 0)
        s = slot.clamp(min=0)
        win = torch.where(ok, tokens[cb[:, None], s], -1)
        win_acts = torch.where(ok, acts[cb[:, None], s, self.features[cf][:, None]].to(self.vals.dtype), math.nan)

        sf, sk = (self.ctx >= 0).nonzero(as_tuple=True)
        f_all = torch.cat([sf, cf])
        v_all = torch.cat([self.vals[sf, sk], sub[cr, cf].to(self.vals.dtype)])
        c_all = torch.cat([self.ctx[sf, sk], ctx[cb]])
        p_all = torch.cat([self.pos[sf, sk], c_pos])
        order = _lexsort([f_all, -v_all, c_all, p_all])
        f_sorted = f_all[order]
        counts = torch.bincount(f_sorted, minlength=n)
        rank = torch.arange(order.numel(), device=acts.device) - (counts.cumsum(0) - counts)[f_sorted]
        take = rank < self.k
        order, f_new, k_new = order[take], f_sorted[take], rank[take]
        win_all = torch.cat([self.win[sf, sk], win])
        win_acts_all = torch.cat([self.win_acts[sf, sk], win_acts])
        self.vals[f_new, k_new] = v_all[order]
        self.ctx[f_new, k_new] = c_all[order]
        self.pos[f_new, k_new] = p_all[order]
        self.win[f_new, k_new] = win_all[order]
        self.win_acts[f_new, k_new] = win_acts_all[order]


@torch.no_grad()
def top_activations(
    model: Any,
    sae: Any,
    source: Any,
    features: Sequence[int] | Tensor | None = None,
    k: int = 20,
    context_window: tuple[int, int] = (8, 4),
    batch_size: int = 8,
    exclude_bos: bool = True,
    context_size: int = 128,
    prepend_bos: bool | None = None,
) -> TopActivations:
    """The ``k`` highest activations of each of ``features`` (default: all) over ``source``, with token windows.

    ``source``: token ids ``[batch, pos]`` (a tensor or 2-d array; each row a context); anything
    :meth:`lens.store.TokenSource.from_any` reads (strings, text files, token files; packed into contexts of
    ``context_size`` tokens, BOS first when ``prepend_bos``, default ``model.cfg.default_prepend_bos``) or a
    ``TokenSource``; or an activation store (``lens.store.open(folder)``) holding ``sae.hook_name``, whose rows are
    encoded directly (no forward). ``batch_size``: contexts per forward (per store read).
    ``context_window = (before, after)``: tokens kept around each hit. See the module docstring for the ranking.

    Raises ValueError naming the value before any forward: feature ids outside ``[0, d_sae)``, ``k < 1``, a hook
    the model (or the store) lacks, widths that do not match.

    >>> top = top_activations(model, sae, ["def f(x):\\n    return x\\n"] * 20, k=5, context_size=32)  # doctest: +SKIP
    >>> top.examples(0)[0]["value"]                                                                   # doctest: +SKIP
    """
    k = _positive_int("k", k)
    batch_size = _positive_int("batch_size", batch_size)
    window = _check_window(context_window)
    feats = _check_features(features, sae.d_sae)
    if not isinstance(exclude_bos, bool):
        raise TypeError(f"exclude_bos must be a bool, got {exclude_bos!r}")
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    if _is_store(source):
        if sae.hook_name not in source.hooks:
            raise ValueError(f"the SAE's hook {sae.hook_name!r} is not in the store; it holds {list(source.hooks)}")
        shape = tuple(source[sae.hook_name].shape[1:])
        if shape != (sae.d_in,):
            raise ValueError(f"the store's {sae.hook_name!r} rows have shape {shape}; the SAE reads d_in={sae.d_in}")
        batches = _store_batches(source, sae.hook_name, batch_size)
    else:
        _check_hooks(model, sae)
        if isinstance(source, np.ndarray) and source.ndim == 2:
            source = torch.from_numpy(source)
        if isinstance(source, Tensor):
            if source.is_floating_point() or source.dtype == torch.bool or source.ndim not in (1, 2):
                raise TypeError(f"token ids must be an integer tensor [batch, pos], got {source.dtype} "
                                f"{tuple(source.shape)} (activations come from a store)")  # fmt: skip
            tokens = (source[None] if source.ndim == 1 else source).long()
            contexts = _tensor_contexts(tokens, batch_size)
        else:
            if not isinstance(source, TokenSource):
                n_ctx = getattr(model.cfg, "n_ctx", None)
                if isinstance(context_size, int) and n_ctx is not None and context_size > n_ctx:
                    raise ValueError(f"context_size={context_size} exceeds the model's n_ctx={n_ctx}")
                add_bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
                source = TokenSource.from_any(source, getattr(model, "tokenizer", None), context_size, add_bos)
            contexts = _source_contexts(source, batch_size)
        batches = _model_batches(model, sae, contexts)

    run = None
    for x, tokens, numbers, positions in batches:
        acts = sae.encode(x.to(sae.device))
        dtype = acts.dtype if acts.dtype in (torch.float32, torch.float64) else torch.float32
        if run is None:
            run = _Running(feats, sae.d_sae, k, window, acts.device, dtype)
        dev = acts.device
        tokens, numbers, positions = tokens.to(dev), numbers.to(dev), positions.to(dev)
        keep = torch.ones(tokens.shape, dtype=torch.bool, device=dev)
        if exclude_bos and bos is not None and int(positions[0]) == 0:
            keep[:, 0] = tokens[:, 0] != bos
        run.update(acts.to(dtype), tokens.long(), numbers.long(), positions.long(), keep)
    if run is None:  # an empty source
        run = _Running(feats, sae.d_sae, k, window, sae.device, torch.float32)
    empty = run.ctx < 0
    return TopActivations(
        hook_name=sae.hook_name,
        d_sae=sae.d_sae,
        features=feats.cpu(),
        values=run.vals.masked_fill(empty, math.nan).cpu(),
        contexts=run.ctx.cpu(),
        positions=run.pos.cpu(),
        windows=run.win.cpu(),
        window_acts=run.win_acts.cpu(),
        fires=run.fires.cpu(),
        max_activation=run.max.cpu(),
        hist=run.hist.cpu(),
        total_tokens=run.total,
        context_window=window,
        exclude_bos=exclude_bos,
    )


def feature_density(
    model_or_result: Any, sae: Any = None, source: Any = None, **kwargs: Any
) -> Float[Tensor, " d_sae"]:
    """The fraction of tokens on which each of the SAE's features fires (activation > 0), ``[d_sae]`` float64.

    Pass a :class:`TopActivations` (its counts: no new pass), or ``(model, sae, source, **kwargs)`` with the
    arguments of :func:`top_activations` (one streaming pass that keeps no top-k).

    >>> feature_density(top)                      # doctest: +SKIP
    >>> feature_density(model, sae, tokens)       # doctest: +SKIP
    """
    if isinstance(model_or_result, TopActivations):
        return model_or_result.density
    if sae is None or source is None:
        raise ValueError("feature_density needs a TopActivations, or model, sae and source")
    kwargs.setdefault("features", [])
    return top_activations(model_or_result, sae, source, **kwargs).density


# -- logit effects -------------------------------------------------------------------------------------------------
@torch.no_grad()
def logit_effects(model: Any, sae: Any, feature: int | Sequence[int], k: int = 10) -> LogitEffects | list[LogitEffects]:
    """The ``k`` tokens whose logits feature ``feature``'s decoder direction raises and lowers most: the entries
    of ``W_dec[feature] @ W_U`` (the direct path to the logits; the final LayerNorm is *not* applied and ``b_U``
    not added, as Neuronpedia's and SAELens's feature dashboards do; input normalisation is ignored, it only
    scales the direction). A transcoder's direction is the one it writes at ``hook_name_out``. A list of features
    gives a list (computed ``256`` features at a time).

    >>> e = logit_effects(model, sae, 7, k=5)       # doctest: +SKIP
    >>> e.top_strings, e.top_values                 # doctest: +SKIP
    """
    k = _positive_int("k", k)
    single = isinstance(feature, (int, np.integer)) and not isinstance(feature, bool)
    feats = _check_features(feature, sae.d_sae)
    _check_hooks(model, sae)
    w_u = model.W_U
    if sae.d_out != w_u.shape[0]:
        raise ValueError(f"logit effects need a decoder of width d_model={w_u.shape[0]}; the SAE writes "
                         f"{sae.d_out} at {sae.hook_name_out or sae.hook_name!r}")  # fmt: skip
    k = min(k, w_u.shape[1])
    out = []
    for start in range(0, len(feats), _LOGIT_CHUNK):
        chunk = feats[start : start + _LOGIT_CHUNK]
        effect = sae.W_dec[chunk.to(sae.W_dec.device)].to(w_u.device, w_u.dtype) @ w_u
        top, bottom = effect.topk(k, dim=1), effect.topk(k, dim=1, largest=False)
        for i, f in enumerate(chunk.tolist()):
            ti, bi = top.indices[i].cpu(), bottom.indices[i].cpu()
            out.append(LogitEffects(f, ti, top.values[i].cpu(), token_strings(model, ti.tolist()),
                                    bi, bottom.values[i].cpu(), token_strings(model, bi.tolist())))  # fmt: skip
    return out[0] if single else out


# -- figures ---------------------------------------------------------------------------------------------------------
def density_histogram(
    density: TopActivations | Float[Tensor, " d_sae"], bins: int = 40, title: str | None = None
) -> go.Figure:
    """A histogram of ``log10`` feature density (``TopActivations`` or a ``[d_sae]`` density); features that never
    fired have no logarithm: they are counted in the title, not drawn.

    >>> fig = density_histogram(torch.tensor([0.0, 1e-3, 1e-2, 0.5]))
    """
    d = to_numpy(density.density if isinstance(density, TopActivations) else density).reshape(-1)
    alive = d[d > 0]
    dead = int((d == 0).sum())
    counts, edges = np.histogram(np.log10(alive), bins=_positive_int("bins", bins)) if alive.size else ([], [0.0])
    edges = np.asarray(edges, dtype=float)
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=np.asarray(counts), width=np.diff(edges),
                           name="features",
                           hovertemplate="log10 density %{x:.2f}: %{y} features<extra></extra>"))  # fmt: skip
    head = title or f"Feature density: {len(d)} features, {dead} dead (never fired, not shown)"
    fig.update_layout(title=head, bargap=0.02)
    fig.update_xaxes(title_text="log10(fraction of tokens the feature fires on)")
    fig.update_yaxes(title_text="features")
    return fig


def logit_effects_figure(effects: LogitEffects, title: str | None = None) -> go.Figure:
    """Bar charts of a feature's promoted (left) and suppressed (right) tokens from :func:`logit_effects`.

    >>> fig = logit_effects_figure(logit_effects(model, sae, 7))      # doctest: +SKIP
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("promoted", "suppressed"), horizontal_spacing=0.2)
    for col, (values, strings, colour) in enumerate(
        (
            (effects.top_values, effects.top_strings, "#2b7bba"),
            (effects.bottom_values, effects.bottom_strings, "#d6404e"),
        )
    ):
        labels = unique_labels([visible(s) for s in strings])
        fig.add_trace(go.Bar(x=to_numpy(values), y=labels, orientation="h", marker_color=colour, showlegend=False,
                             hovertemplate="%{y}: %{x:.4g}<extra></extra>"), row=1, col=col + 1)  # fmt: skip
        fig.update_yaxes(type="category", autorange="reversed", row=1, col=col + 1)
    fig.update_layout(title=title or f"Feature {effects.feature}: logit effects (W_dec @ W_U)")
    return fig


def activation_histogram(result: TopActivations, feature: int, title: str | None = None) -> go.Figure:
    """A histogram of ``feature``'s non-zero activations over the pass (log-spaced bins of ``result.hist_edges``).

    >>> fig = activation_histogram(top, 7)          # doctest: +SKIP
    """
    i = result.row(feature)
    counts = result.hist[i].numpy()
    width = (HIST_LOG10[1] - HIST_LOG10[0]) / HIST_BINS
    nz = counts.nonzero()[0]
    centres = HIST_LOG10[0] + (nz + 0.5) * width
    fig = go.Figure(go.Bar(x=centres, y=counts[nz], width=width, name="tokens", customdata=10.0**centres,
                           hovertemplate="activation ~%{customdata:.3g}: %{y} tokens<extra></extra>"))  # fmt: skip
    fires = int(result.fires[feature])
    fig.update_layout(title=title or f"Feature {feature}: activations > 0 ({fires} of {result.total_tokens} tokens)",
                      bargap=0.02)  # fmt: skip
    decades = list(range(math.floor(centres.min()), math.ceil(centres.max()) + 1)) if nz.size else []
    fig.update_xaxes(title_text="activation (log scale)", tickvals=decades, ticktext=[f"{10.0**d:g}" for d in decades])
    fig.update_yaxes(title_text="tokens")
    return fig
