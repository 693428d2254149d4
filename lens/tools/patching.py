"""Batched activation patching: which activations carry the difference between a clean and a corrupted run?

Why: activation patching runs the model on the corrupted prompt, overwrites one activation "site"
(a layer and position, a head, a neuron, ...) with its value from the clean run, and measures how far
a metric moves back towards the clean answer. Done naively that is one forward pass per site; here
many sites run in one batched forward: the corrupted prompt is repeated once per site and a single
hook writes each batch row's site from the clean cache with index tensors (no Python loop per row).
Each batch only runs from the first layer it patches (``start_at_layer``, fed the corrupted run's
cached residual stream): everything before that is the corrupted run, so this is exact.

Helpers (TransformerLens names, argument order ``(model, corrupted_tokens, clean_cache, patching_metric)``,
result shapes): ``get_act_patch_{resid_pre,resid_mid,attn_out,mlp_out}`` ``[layer, pos]``;
``get_act_patch_attn_head_{out,q,k,v,pattern}_all_pos`` ``[layer, head]``;
``get_act_patch_attn_head_{out,q,k,v}_by_pos`` ``[layer, pos, head]``, ``..._pattern_by_pos``
``[layer, head, dest_pos]``, ``..._pattern_dest_src_pos`` ``[layer, head, dest_pos, src_pos]``;
``get_act_patch_mlp_post_{all,by}_pos`` ``[layer, (pos,) neuron]``;
``get_act_patch_block_every`` ``[3, layer, pos]``, ``get_act_patch_attn_head_{all,by}_pos_every``
``[5, layer, (pos,) head]`` (order: out/z, q, k, v, pattern).

Under grouped-query attention k / v have ``n_key_value_heads`` heads (their own index); in the
``_every`` stacks they are padded with NaN up to ``n_heads`` (TransformerLens pads with 0, which reads
like a real value). Pass ``labelled=True`` to any helper for a :class:`PatchingResult` (values, dim
names, tick labels, ``.figure()``). :func:`generic_activation_patch` is the general form: any hook(s),
any index space, a subset of layers / positions / heads / neurons, and the batch size.

**The metric.** ``patching_metric(logits)`` gets logits ``[rows, pos, d_vocab]`` and returns either

- a tensor ``[rows]``, one value per batch row ("per-row" metric, the fast path): the value of a
  patch is the mean over the rows of the prompt batch (with one prompt: that row's value); or
- a 0-d tensor: a metric written for a single run of the ``[batch, pos, d_vocab]`` corrupted batch
  (TransformerLens style, e.g. a mean logit difference). This is detected on the corrupted run and
  the metric is then mapped over the patched runs with ``torch.func.vmap``, or a Python loop when
  vmap cannot trace it (``.item()``, data-dependent control flow).

Anything else raises ``ValueError``.

>>> def logit_diff(logits):                                  # per-row metric
...     return logits[:, -1, answer] - logits[:, -1, wrong]
>>> _, clean_cache = model.run_with_cache(clean_tokens)
>>> res = get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, logit_diff)   # [n_layers, pos]
>>> fig = generic_activation_patch(model, corrupted_tokens, clean_cache, logit_diff, "z", ("layer", "head")).figure()
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens.names import unknown_hook_error
from lens.tools.patch_setters import (  # TransformerLens's per-site API, in this namespace as in its patching module
    layer_head_dest_src_pos_pattern_patch_setter,
    layer_head_pattern_patch_setter,
    layer_head_pos_pattern_patch_setter,
    layer_head_vector_patch_setter,
    layer_pos_head_vector_patch_setter,
    layer_pos_patch_setter,
    make_df_from_ranges,
    setter_activation_patch,
)
from lens.utils import get_act_name

SPECS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "resid_pre": ("resid_pre", ("layer", "pos"), "the residual stream entering each block, by position"),
    "resid_mid": ("resid_mid", ("layer", "pos"), "the residual stream between attention and MLP, by position"),
    "attn_out": ("attn_out", ("layer", "pos"), "each attention layer's output, by position"),
    "mlp_out": ("mlp_out", ("layer", "pos"), "each MLP layer's output, by position"),
    "attn_head_out_all_pos": ("z", ("layer", "head"), "each head's output (z), all positions at once"),
    "attn_head_q_all_pos": ("q", ("layer", "head"), "each head's queries, all positions at once"),
    "attn_head_k_all_pos": ("k", ("layer", "head"), "each key head's keys (n_key_value_heads under GQA)"),
    "attn_head_v_all_pos": ("v", ("layer", "head"), "each value head's values (n_key_value_heads under GQA)"),
    "attn_head_pattern_all_pos": ("pattern", ("layer", "head"), "each head's attention pattern"),
    "attn_head_out_by_pos": ("z", ("layer", "pos", "head"), "each head's output (z), by position"),
    "attn_head_q_by_pos": ("q", ("layer", "pos", "head"), "each head's query, by position"),
    "attn_head_k_by_pos": ("k", ("layer", "pos", "head"), "each key head's key, by position"),
    "attn_head_v_by_pos": ("v", ("layer", "pos", "head"), "each value head's value, by position"),
    "attn_head_pattern_by_pos": ("pattern", ("layer", "head", "dest_pos"), "each head's pattern row, by destination"),
    "attn_head_pattern_dest_src_pos": ("pattern", ("layer", "head", "dest_pos", "src_pos"), "each pattern entry"),
    "mlp_post_all_pos": ("post", ("layer", "neuron"), "each MLP neuron, all positions at once"),
    "mlp_post_by_pos": ("post", ("layer", "pos", "neuron"), "each MLP neuron, by position"),
}

__all__ = [
    "DEFAULT_TOKENS_PER_BATCH",
    "PatchingResult",
    "generic_activation_patch",
    "layer_head_dest_src_pos_pattern_patch_setter",
    "layer_head_pattern_patch_setter",
    "layer_head_pos_pattern_patch_setter",
    "layer_head_vector_patch_setter",
    "layer_pos_head_vector_patch_setter",
    "layer_pos_patch_setter",
    "make_df_from_ranges",
    "setter_activation_patch",
] + [f"get_act_patch_{k}" for k in (*SPECS, "block_every", "attn_head_all_pos_every", "attn_head_by_pos_every")]

Metric = Callable[[Tensor], Tensor]

#: Default batch size, in tokens: a batch holds ``max(1, DEFAULT_TOKENS_PER_BATCH // (batch * pos))``
#: patched runs. Bigger batches amortise per-forward overhead but cost ``rows * pos * d_vocab`` floats
#: of logits (1024 tokens: ~200 MB at GPT-2's vocabulary) and span more layers, so start later less
#: often (see docs/benchmarks.md).
DEFAULT_TOKENS_PER_BATCH = 1024

_HEAD_VEC = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "q_input", "k_input", "v_input", "attn_in"}
_AXES_RESID = {"pos": 1}
_AXES_HEAD = {"pos": 1, "head": 2}
_AXES_PATTERN = {"head": 1, "dest_pos": 2, "src_pos": 3}
_AXES_NEURON = {"pos": 1, "neuron": 2}
_INDEX_NAMES = ("layer", "head_index", "dest_pos", "src_pos", "neuron", "head", "pos")
_TITLES = {"layer": "Layer", "pos": "Position", "dest_pos": "Destination position",
           "src_pos": "Source position", "head": "Head", "neuron": "Neuron"}  # fmt: skip


# ----------------------------------------------------------------------------- result
@dataclass
class PatchingResult:
    """Metric values of a patching sweep with their index names and tick labels.

    ``values[i, j, ...]`` belongs to ``indices[dims[0]][i]``, ``indices[dims[1]][j]``, ...;
    ``labels`` holds display strings (token strings for positions, ``"H3"`` for heads, ...).
    ``baseline`` is the metric of the unpatched corrupted run. ``np.asarray(result)`` works, so a
    result can go straight into :mod:`lens.plot`.

    >>> res.dims, res.values.shape
    (('layer', 'pos'), torch.Size([2, 7]))
    >>> res.figure(title="resid_pre").write_html("patch.html")
    """

    values: Tensor
    dims: tuple[str, ...]
    indices: dict[str, list[int]]
    labels: dict[str, list[str]]
    act_names: list[str]
    baseline: float | None = None
    kind: str = "activation patching"

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self.values.detach().float().cpu().numpy()
        return arr if dtype is None else arr.astype(dtype)

    def figure(self, title: str | None = None, **fixed: int):
        """A plotly heatmap (:func:`lens.plot.patching_heatmap`) of two dims; fix the others by value.

        >>> res.figure()                       # [layer, pos]: tokens on the x axis
        >>> res_by_pos.figure(head=3)          # [layer, pos, head] -> head 3's [layer, pos] map
        """
        from lens.tools import plot

        values, dims = self.values, list(self.dims)
        for name, value in fixed.items():
            if name not in dims:
                raise ValueError(f"{name!r} is not a dimension of this result; dims are {tuple(dims)}")
            if value not in self.indices[name]:
                raise ValueError(f"{name}={value} was not patched; patched {name}s: {self.indices[name]}")
            values = values.select(dims.index(name), self.indices[name].index(value))
            dims.remove(name)
        if len(dims) != 2:
            raise ValueError(f"figure() needs 2 dims but {tuple(dims)} remain; fix the others, e.g. {dims[-1]}=0")
        y, x = dims
        title = title if title is not None else f"{self.kind}: {_short(self.act_names)}"
        return plot.patching_heatmap(
            values, self.labels[x], self.labels[y], title=title, x_title=_TITLES[x], y_title=_TITLES[y]
        )

    def __repr__(self) -> str:
        return f"PatchingResult({self.kind}, {_short(self.act_names)}, dims={self.dims}, shape={tuple(self.shape)})"


def _short(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"


# ----------------------------------------------------------------------------- planning
@dataclass
class _Plan:
    names: list[str]  # hook names along the first ("layer") dim
    layers: list[int | None]  # block index where each hook fires (n_layers: after the blocks)
    clean: list[Tensor]  # clean activation per hook, [clean_batch, ...]
    axes: list[int]  # activation axis of each non-layer index name
    values: list[Tensor]  # selected indices of each non-layer index name
    result: PatchingResult  # empty result carrying dims / indices / labels


def check_tokens(model: Any, tokens: Any) -> Int[Tensor, "batch pos"]:
    if isinstance(tokens, (str, list)):
        tokens = model.to_tokens(tokens)
    if not isinstance(tokens, Tensor):
        raise TypeError(f"corrupted_tokens must be a [batch, pos] tensor of token ids, got {type(tokens).__name__}")
    return model.check_tokens(tokens)


def _hook_layer(name: str, n_layers: int) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1))
    return n_layers if name.startswith(("ln_final.", "unembed.")) else None


def _axes_for(name: str) -> dict[str, int]:
    short = name.rsplit(".", 1)[-1].removeprefix("hook_")
    if short in _HEAD_VEC:
        return _AXES_HEAD
    if short in ("pattern", "attn_scores"):
        return _AXES_PATTERN
    if ".mlp." in name and short in ("pre", "post", "pre_linear", "mid"):
        return _AXES_NEURON
    return _AXES_RESID


def _index_names(index: str | Sequence[str]) -> list[str]:
    if isinstance(index, str):
        rest, names = index, []
        while rest:
            match = next((n for n in _INDEX_NAMES if rest.startswith(n)), None)
            if match is None:
                raise ValueError(f"cannot parse index space {index!r}; use names from {sorted(set(_INDEX_NAMES))}")
            names.append(match)
            rest = rest[len(match) :].lstrip("_")
    else:
        names = list(index)
    names = ["head" if n == "head_index" else n for n in names]
    if not names or names[0] != "layer":
        raise ValueError(f"the index space must start with 'layer', got {tuple(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"repeated index names in {tuple(names)}")
    return names


def _resolve_hooks(model: Any, act_name: str | Sequence[str], layers: Sequence[int] | None):
    n = model.cfg.n_layers
    if isinstance(act_name, str) and "." not in act_name and not act_name.startswith("hook_"):
        if not get_act_name(act_name, 0).startswith("blocks."):
            act_name = get_act_name(act_name, 0)  # a top-level hook such as hook_embed
    if isinstance(act_name, str) and "." not in act_name and not act_name.startswith("hook_"):
        layer_ids = _check_ids("layers", range(n) if layers is None else layers, n, f"a model with {n} layers")
        names, labels = [get_act_name(act_name, layer) for layer in layer_ids], [str(i) for i in layer_ids]
    else:
        if layers is not None:
            raise ValueError("layers= only applies to a short activation name such as 'resid_pre'")
        names = [act_name] if isinstance(act_name, str) else list(act_name)
        layer_ids, labels = list(range(len(names))), names
    if not names:
        raise ValueError("no hooks to patch")
    for name in names:
        if not isinstance(name, str) or name not in model.hook_dict:
            raise unknown_hook_error(str(name), model.hook_dict)
    return names, layer_ids, labels


def _check_ids(what: str, ids: Any, size: int, where: str) -> list[int]:
    ids = ids.tolist() if isinstance(ids, Tensor) else ids
    ids = [ids] if isinstance(ids, int) else list(ids)
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not -size <= i < size]
    if bad:
        raise ValueError(f"{what}={bad} out of range for {where} (valid: 0..{size - 1})")
    if not ids:
        raise ValueError(f"{what} is empty")
    return [i % size for i in ids]


def _clean_act(clean_cache: Any, name: str, device: torch.device) -> Tensor:
    try:
        act = clean_cache[name]
    except KeyError:
        raise ValueError(f"clean_cache has no {name!r}; cache it in run_with_cache") from None
    if not getattr(clean_cache, "has_batch_dim", True):
        act = act.unsqueeze(0)
    return act.to(device)


def make_plan(
    model: Any,
    tokens: Tensor,
    clean_cache: Any,
    act_name: str | Sequence[str],
    index: str | Sequence[str],
    layers: Sequence[int] | None = None,
    select: dict[str, Any] | None = None,
    kind: str = "activation patching",
) -> _Plan:
    """Resolve hooks, index space and selections, check shapes (shared with :mod:`lens.attribution`)."""
    names, layer_ids, layer_labels = _resolve_hooks(model, act_name, layers)
    dims = _index_names(index)
    n_batch, n_pos = tokens.shape
    device = tokens.device
    axes_map = _axes_for(names[0])
    if any(_axes_for(n) != axes_map for n in names):
        raise ValueError(f"hooks {names} have different activation layouts; patch them separately")
    if axes_map is _AXES_PATTERN:
        dims = ["dest_pos" if d == "pos" else d for d in dims]
    clean = [_clean_act(clean_cache, name, device) for name in names]
    for name, act in zip(names, clean):
        pos_axes = [ax for d, ax in axes_map.items() if d in ("pos", "dest_pos", "src_pos")]
        if act.ndim <= max(axes_map.values()) or any(act.shape[ax] != n_pos for ax in pos_axes):
            raise ValueError(
                f"clean_cache[{name!r}] has shape {tuple(act.shape)}, but corrupted_tokens has shape "
                f"{tuple(tokens.shape)}: clean and corrupted inputs must have the same number of positions"
            )
        if act.shape[0] not in (n_batch, 1):
            raise ValueError(
                f"clean_cache[{name!r}] has batch size {act.shape[0]}, but corrupted_tokens has batch size "
                f"{n_batch}: clean and corrupted token shapes must match (or the clean batch be 1)"
            )
    select = {k: v for k, v in (select or {}).items() if v is not None}
    if axes_map is _AXES_PATTERN and "pos" in select:
        select["dest_pos"] = select.pop("pos")
    for key in select:
        if key not in dims:
            raise ValueError(f"a selection of {key!r} was given, but the index space is {tuple(dims)}")
    axes, values = [], []
    indices, labels = {"layer": layer_ids}, {"layer": layer_labels}
    str_tokens = _str_tokens(model, tokens)
    for d in dims[1:]:
        if d not in axes_map:
            raise ValueError(f"index {d!r} does not apply to {names[0]} (its indexable dims: {tuple(axes_map)})")
        size = clean[0].shape[axes_map[d]]
        if any(c.shape[axes_map[d]] != size for c in clean):
            raise ValueError(f"the hooks have different {d} sizes")
        ids = _check_ids(f"{d} indices", select.get(d, range(size)), size, f"{names[0]} ({d} size {size})")
        axes.append(axes_map[d])
        values.append(torch.tensor(ids, dtype=torch.long, device=device))
        indices[d] = ids
        if d in ("pos", "dest_pos", "src_pos"):
            labels[d] = [str_tokens[i] if str_tokens else str(i) for i in ids]
        else:
            labels[d] = [f"{'H' if d == 'head' else 'N'}{i}" for i in ids]
    sizes = [len(indices[d]) for d in dims]
    result = PatchingResult(torch.empty(sizes), tuple(dims), indices, labels, names, kind=kind)
    hook_layers = [_hook_layer(n, model.cfg.n_layers) for n in names]
    return _Plan(names, hook_layers, clean, axes, values, result)


def _str_tokens(model: Any, tokens: Tensor) -> list[str] | None:
    if getattr(model, "tokenizer", None) is None:
        return None
    try:
        return list(model.to_str_tokens(tokens[0]))
    except Exception:  # a tokenizer that cannot decode these ids: fall back to indices
        return None


# ----------------------------------------------------------------------------- metric
class MetricRunner:
    """Calls a per-row (``[rows]``) or single-run (0-d) metric; see the module docs."""

    def __init__(self, metric: Metric, n_prompts: int):
        if not callable(metric):
            raise TypeError(f"patching_metric must be callable, got {type(metric).__name__}")
        self.metric, self.n, self.mode, self.use_vmap = metric, n_prompts, None, True

    def _check(self, out: Any, shape: tuple[int, ...], what: str) -> Tensor:
        if not isinstance(out, Tensor):
            raise TypeError(f"patching_metric must return a torch.Tensor, got {type(out).__name__} ({what})")
        if tuple(out.shape) != shape:
            raise ValueError(
                f"patching_metric returned shape {tuple(out.shape)} {what}, expected {shape}. It must return "
                "one value per batch row ([rows]) or, for a metric written for one run, a 0-d tensor"
            )
        return out

    def probe(self, logits: Float[Tensor, "batch pos vocab"]) -> Tensor:
        """Evaluate on the unpatched corrupted run; fixes the mode. Returns the 0-d baseline."""
        out = self.metric(logits)
        if isinstance(out, Tensor) and out.ndim == 0:
            self.mode = "run"
            return out
        out = self._check(out, (self.n,), f"on the corrupted logits of shape {tuple(logits.shape)}")
        self.mode = "row"
        return out.float().mean()

    def __call__(self, logits: Float[Tensor, "rows pos vocab"], n_runs: int) -> Float[Tensor, "n_runs"]:
        rows = tuple(logits.shape)
        if self.mode == "row":
            try:
                out = self.metric(logits)
            except Exception as err:
                raise RuntimeError(
                    f"patching_metric failed on batched logits of shape {rows}: a per-row metric must accept "
                    "any number of rows (or return a 0-d tensor to be called once per run)"
                ) from err
            out = self._check(out, (rows[0],), f"on batched logits of shape {rows} (rows = runs x prompts)")
            return out.float().view(n_runs, self.n).mean(1)
        runs = logits.view(n_runs, self.n, *rows[1:])
        if self.use_vmap:
            try:
                out = torch.func.vmap(self.metric)(runs)
            except Exception:  # not vmappable (.item(), data-dependent control flow): loop instead
                self.use_vmap = False
            else:
                return self._check(out, (n_runs,), "under vmap").float()
        outs = [self._check(self.metric(run), (), f"on one run's logits {tuple(run.shape)}") for run in runs]
        return torch.stack(outs).float()


# ----------------------------------------------------------------------------- engine
def _patch_hook(runs: Tensor, vals: list[Tensor], axes: list[int], clean: Tensor, n_prompts: int):
    """A forward hook writing ``clean`` at each run's site: one vectorised index_put, no per-row loop."""
    k = runs.shape[0]
    prompt = torch.arange(n_prompts, device=runs.device)
    rows = runs[:, None] * n_prompts + prompt[None]  # [k, N]
    src = prompt[None].expand(k, -1) if clean.shape[0] == n_prompts else torch.zeros_like(rows)
    dst_idx: list[Any] = [rows] + [slice(None)] * (clean.ndim - 1)
    src_idx: list[Any] = [src] + [slice(None)] * (clean.ndim - 1)
    for ax, v in zip(axes, vals):
        dst_idx[ax] = src_idx[ax] = v[:, None]
    dst_idx, src_idx = tuple(dst_idx), tuple(src_idx)
    value = clean[src_idx]

    def hook(act: Tensor, hook: Any) -> Tensor:
        act[dst_idx] = value.to(act.dtype)
        return act

    return hook


@torch.no_grad()
def run_plan(
    model: Any, tokens: Tensor, plan: _Plan, metric: Metric, batch_size: int | None, start_at_layer: bool
) -> PatchingResult:
    """Run every site of ``plan`` in batched forwards; fills and returns ``plan.result``."""
    n_prompts, n_pos = tokens.shape
    n = model.cfg.n_layers
    runner = MetricRunner(metric, n_prompts)
    use_start = start_at_layer and all(layer is not None for layer in plan.layers)
    resid_names = [f"blocks.{i}.hook_resid_pre" for i in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    if use_start:
        logits, corrupt = model.run_with_cache(tokens, names_filter=resid_names)
        resid = [corrupt[name] for name in resid_names]  # resid[n] is the input of ln_final
    else:
        logits = model(tokens)
    baseline = runner.probe(logits)
    del logits

    # Sites: hooks (sorted by layer so a batch starts late) x the cartesian grid of the other indices.
    order = sorted(range(len(plan.names)), key=lambda i: -1 if plan.layers[i] is None else plan.layers[i])
    grid = torch.cartesian_prod(*plan.values) if plan.values else torch.zeros(1, 0, dtype=torch.long)
    grid = grid.reshape(-1, len(plan.values)).to(tokens.device)
    per_hook = grid.shape[0]
    site_hook = torch.tensor(order, device=tokens.device).repeat_interleave(per_hook)
    site_vals = grid.repeat(len(order), 1)
    n_sites = site_hook.shape[0]
    if batch_size is None:
        batch_size = max(1, DEFAULT_TOKENS_PER_BATCH // (n_prompts * n_pos))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (patched runs per forward), got {batch_size!r}")
    n_chunks = math.ceil(n_sites / batch_size)
    batch_size = math.ceil(n_sites / n_chunks)  # balance the chunks

    out = torch.empty(n_sites)
    for start in range(0, n_sites, batch_size):
        stop = min(start + batch_size, n_sites)
        k = stop - start
        hooks_here = site_hook[start:stop]
        fwd_hooks = []
        for h in torch.unique_consecutive(hooks_here).tolist():
            local = (hooks_here == h).nonzero().squeeze(1)
            vals = [site_vals[start:stop][local, j] for j in range(len(plan.values))]
            fn = _patch_hook(local, vals, plan.axes, plan.clean[h], n_prompts)
            fwd_hooks.append((plan.names[h], fn))
        first = min(plan.layers[h] for h in torch.unique(hooks_here).tolist()) if use_start else None
        inp = tokens.repeat(k, 1) if first is None else resid[first].repeat(k, 1, 1)
        with model.hooks(fwd_hooks):
            logits = model(inp, start_at_layer=first)
        out[start:stop] = runner(logits, k).cpu()
        del logits

    result = plan.result  # undo the layer sort of the hooks
    result.values = out.view(len(order), per_hook)[torch.argsort(torch.tensor(order))].view(result.values.shape)
    result.baseline = float(baseline)
    return result


def generic_activation_patch(
    model: Any,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: Any,
    patching_metric: Metric,
    act_name: str | Sequence[str] | Callable = "resid_pre",
    *args: Any,
    index_axis_names: str | Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    src_positions: Sequence[int] | None = None,
    batch_size: int | None = None,
    start_at_layer: bool = True,
    **tl_kwargs: Any,
) -> PatchingResult:
    """Patch every site of an index space from ``clean_cache`` into the corrupted run; batched.

    TransformerLens's call, with a patch setter (a callable fifth argument or ``patch_setter=``, then
    ``activation_name``, ``index_axis_names``, ``index_df``, ``return_index_df``), runs one forward per site
    with that setter and returns a tensor, as TransformerLens (:mod:`lens.tools.patch_setters`).

    Args:
        act_name: a short name patched at each of ``layers`` (``"resid_pre"``, ``"z"``, ``"pattern"``,
            ``"post"``, ...), or one full hook name / a list of them (the first result dim is then
            the list; hooks before the blocks such as ``hook_embed`` run from the tokens).
        index_axis_names: the site space, starting with ``"layer"``: ``("layer", "pos")``,
            ``("layer", "head")``, ``("layer", "pos", "head")``, ``("layer", "head", "dest_pos")``,
            ``("layer", "neuron")``, ``("layer", "pos", "neuron")``, ... (or ``"layer_pos_head"``).
            Dims not named are patched whole (e.g. all positions of a head).
        layers / positions / heads / neurons / src_positions: restrict the sweep to these indices.
        batch_size: patched runs per forward (default ``DEFAULT_TOKENS_PER_BATCH // (batch * pos)``).
        start_at_layer: start each batch at its first patched layer from the corrupted residual
            stream (exact; turn off to run every batch from the tokens).

    Returns a :class:`PatchingResult` ``[len(layers), ...]`` with ``baseline`` = corrupted metric.

    >>> res = generic_activation_patch(model, corrupted, clean_cache, metric, "z", ("layer", "pos", "head"))
    >>> res.values.shape        # [n_layers, pos, n_heads]
    """
    if callable(act_name) or "patch_setter" in tl_kwargs:  # TransformerLens's convention: a patch setter
        args = (act_name, *args) if callable(act_name) else args
        if index_axis_names is not None:
            tl_kwargs["index_axis_names"] = index_axis_names
        tokens = check_tokens(model, corrupted_tokens)
        return setter_activation_patch(model, tokens, clean_cache, patching_metric, *args, **tl_kwargs)
    if tl_kwargs:
        raise TypeError(f"generic_activation_patch() got an unexpected keyword argument {next(iter(tl_kwargs))!r}")
    if len(args) > 1 or (args and index_axis_names is not None):
        raise TypeError("generic_activation_patch() takes act_name and index_axis_names as positional arguments")
    index_axis_names = args[0] if args else ("layer", "pos") if index_axis_names is None else index_axis_names
    tokens = check_tokens(model, corrupted_tokens)
    select = {"pos": positions, "head": heads, "neuron": neurons, "src_pos": src_positions}
    plan = make_plan(model, tokens, clean_cache, act_name, index_axis_names, layers, select)
    return run_plan(model, tokens, plan, patching_metric, batch_size, start_at_layer)


# ----------------------------------------------------------------------------- named helpers
def make_helper(engine: Callable[..., PatchingResult], prefix: str, key: str) -> Callable[..., Any]:
    """Build ``{prefix}{key}(model, corrupted_tokens, clean_cache, patching_metric)`` on ``engine``."""
    act, index, what = SPECS[key]

    def helper(model, corrupted_tokens, clean_cache, patching_metric, *, labelled: bool = False, **kwargs):
        res = engine(model, corrupted_tokens, clean_cache, patching_metric, act, index, **kwargs)
        return res if labelled else res.values

    helper.__name__ = helper.__qualname__ = f"{prefix}{key}"
    shape = ", ".join("n_layers" if d == "layer" else d for d in index)
    helper.__doc__ = (
        f"{'Attribution-patching estimates' if 'attr' in prefix else 'Activation patching'} for {what} "
        f"({act!r} hooks); returns ``[{shape}]``.\n\n"
        f"Arguments as TransformerLens ``(model, corrupted_tokens, clean_cache, patching_metric)``; "
        f"keyword arguments go to the generic function (``layers=``, ``batch_size=``, ...) and "
        f"``labelled=True`` returns a :class:`PatchingResult`.\n\n"
        f">>> {prefix}{key}(model, corrupted_tokens, clean_cache, metric).shape"
    )
    return helper


_HELPERS = {k: make_helper(generic_activation_patch, "get_act_patch_", k) for k in SPECS}
get_act_patch_resid_pre = _HELPERS["resid_pre"]
get_act_patch_resid_mid = _HELPERS["resid_mid"]
get_act_patch_attn_out = _HELPERS["attn_out"]
get_act_patch_mlp_out = _HELPERS["mlp_out"]
get_act_patch_attn_head_out_all_pos = _HELPERS["attn_head_out_all_pos"]
get_act_patch_attn_head_q_all_pos = _HELPERS["attn_head_q_all_pos"]
get_act_patch_attn_head_k_all_pos = _HELPERS["attn_head_k_all_pos"]
get_act_patch_attn_head_v_all_pos = _HELPERS["attn_head_v_all_pos"]
get_act_patch_attn_head_pattern_all_pos = _HELPERS["attn_head_pattern_all_pos"]
get_act_patch_attn_head_out_by_pos = _HELPERS["attn_head_out_by_pos"]
get_act_patch_attn_head_q_by_pos = _HELPERS["attn_head_q_by_pos"]
get_act_patch_attn_head_k_by_pos = _HELPERS["attn_head_k_by_pos"]
get_act_patch_attn_head_v_by_pos = _HELPERS["attn_head_v_by_pos"]
get_act_patch_attn_head_pattern_by_pos = _HELPERS["attn_head_pattern_by_pos"]
get_act_patch_attn_head_pattern_dest_src_pos = _HELPERS["attn_head_pattern_dest_src_pos"]
get_act_patch_mlp_post_all_pos = _HELPERS["mlp_post_all_pos"]
get_act_patch_mlp_post_by_pos = _HELPERS["mlp_post_by_pos"]


def stack_every(results: list[Tensor], n_heads: int) -> Tensor:
    """Stack per-type results, NaN-padding a trailing head dim (GQA k / v) up to ``n_heads``."""
    padded = []
    for r in results:
        if r.shape[-1] < n_heads:
            r = torch.nn.functional.pad(r, (0, n_heads - r.shape[-1]), value=float("nan"))
        padded.append(r)
    return torch.stack(padded, dim=0)


def block_every(engine: Callable[..., PatchingResult], model, corrupted_tokens, clean_cache, metric, **kw) -> Tensor:
    n = model.cfg.n_layers
    acts = ["resid_pre", "attn_out"] + ([] if model.cfg.attn_only else ["mlp_out"])
    names = [get_act_name(a, layer) for a in acts for layer in range(n)]
    res = engine(model, corrupted_tokens, clean_cache, metric, names, ("layer", "pos"), **kw).values
    res = res.view(len(acts), n, -1)
    if model.cfg.attn_only:  # no MLP: its row is NaN
        res = torch.cat([res, torch.full_like(res[:1], float("nan"))], dim=0)
    return res


def get_act_patch_block_every(model, corrupted_tokens, clean_cache, patching_metric, **kwargs) -> Tensor:
    """``[3, n_layers, pos]``: resid_pre, attn_out, mlp_out patching (one batched sweep; attn_only: mlp NaN).

    >>> get_act_patch_block_every(model, corrupted_tokens, clean_cache, metric).shape
    """
    return block_every(generic_activation_patch, model, corrupted_tokens, clean_cache, patching_metric, **kwargs)


def head_every(helpers: dict[str, Callable[..., Tensor]], suffix: str, model, *args, **kwargs) -> Tensor:
    """Stack out (z), q, k, v, pattern results of ``helpers`` (k / v NaN-padded to n_heads under GQA)."""
    res = [helpers[f"attn_head_{k}_{suffix}"](model, *args, **kwargs) for k in ("out", "q", "k", "v", "pattern")]
    if suffix == "by_pos":
        res[-1] = res[-1].transpose(1, 2)  # [layer, head, dest_pos] -> [layer, pos, head]
    return stack_every(res, model.cfg.n_heads)


def get_act_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, patching_metric, **kwargs) -> Tensor:
    """``[5, n_layers, n_heads]``: out (z), q, k, v, pattern per head, all positions (k/v NaN-padded under GQA).

    >>> get_act_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, metric).shape
    """
    return head_every(_HELPERS, "all_pos", model, corrupted_tokens, clean_cache, patching_metric, **kwargs)


def get_act_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, patching_metric, **kwargs) -> Tensor:
    """``[5, n_layers, pos, n_heads]``: out (z), q, k, v, pattern per head and position (pattern by dest).

    >>> get_act_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, metric).shape
    """
    return head_every(_HELPERS, "by_pos", model, corrupted_tokens, clean_cache, patching_metric, **kwargs)
