"""TransformerLens's per-site patching API: patch setters and ``generic_activation_patch`` with a setter.

TransformerLens's ``generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric,
patch_setter, activation_name, index_axis_names=None, index_df=None, return_index_df=False)`` runs one
forward per site, calling ``patch_setter(corrupted_activation, index, clean_activation)`` on the hook
``get_act_name(activation_name, index[0])``. :func:`lens.tools.patching.generic_activation_patch` takes
that call (a callable fifth argument or ``patch_setter=``) and runs it here, so a custom setter works
as in TransformerLens; lens's own call (an activation name and index axes) batches the sites instead.

The setters are TransformerLens's, by name and semantics (``index`` starts with the layer):
``layer_pos_patch_setter`` ([batch, pos, ...] activations), ``layer_pos_head_vector_patch_setter`` and
``layer_head_vector_patch_setter`` ([batch, pos, head, ...]: q, k, v, z, result),
``layer_head_pattern_patch_setter``, ``layer_head_pos_pattern_patch_setter`` and
``layer_head_dest_src_pos_pattern_patch_setter`` ([batch, head, dest, src]: pattern, scores).

``index_df`` / ``make_df_from_ranges`` use pandas (not a lens dependency; install it to use them).

>>> out = generic_activation_patch(model, corrupted, clean_cache, metric, layer_pos_patch_setter,
...                                "resid_pre", ["layer", "pos"])             # doctest: +SKIP
>>> out.shape                                                                 # [n_layers, pos]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from lens.names import get_act_name

__all__ = [
    "layer_head_dest_src_pos_pattern_patch_setter",
    "layer_head_pattern_patch_setter",
    "layer_head_pos_pattern_patch_setter",
    "layer_head_vector_patch_setter",
    "layer_pos_head_vector_patch_setter",
    "layer_pos_patch_setter",
    "make_df_from_ranges",
    "setter_activation_patch",
]

AXES = ("layer", "pos", "head_index", "head", "src_pos", "dest_pos")


def _unpack(index: Sequence[int], n: int, names: str) -> list[int]:
    index = [int(i) for i in index]
    if len(index) != n:
        raise ValueError(f"this patch setter takes an index ({names}) of {n} numbers, got {index}")
    return index


def layer_pos_patch_setter(corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor) -> Tensor:
    """Patch position ``pos`` of a ``[batch, pos, ...]`` activation; ``index = (layer, pos)``."""
    _, pos = _unpack(index, 2, "layer, pos")
    corrupted_activation[:, pos, ...] = clean_activation[:, pos, ...]
    return corrupted_activation


def layer_pos_head_vector_patch_setter(
    corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
) -> Tensor:
    """Patch one head at one position of a ``[batch, pos, head, ...]`` activation; ``index = (layer, pos, head)``."""
    _, pos, head = _unpack(index, 3, "layer, pos, head_index")
    corrupted_activation[:, pos, head] = clean_activation[:, pos, head]
    return corrupted_activation


def layer_head_vector_patch_setter(
    corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
) -> Tensor:
    """Patch one head at every position of a ``[batch, pos, head, ...]`` activation; ``index = (layer, head)``."""
    _, head = _unpack(index, 2, "layer, head_index")
    corrupted_activation[:, :, head] = clean_activation[:, :, head]
    return corrupted_activation


def layer_head_pattern_patch_setter(
    corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
) -> Tensor:
    """Patch one head of a ``[batch, head, dest, src]`` pattern; ``index = (layer, head)``."""
    _, head = _unpack(index, 2, "layer, head_index")
    corrupted_activation[:, head, :, :] = clean_activation[:, head, :, :]
    return corrupted_activation


def layer_head_pos_pattern_patch_setter(
    corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
) -> Tensor:
    """Patch one query row of one head's pattern; ``index = (layer, head, dest_pos)``."""
    _, head, dest = _unpack(index, 3, "layer, head_index, dest_pos")
    corrupted_activation[:, head, dest, :] = clean_activation[:, head, dest, :]
    return corrupted_activation


def layer_head_dest_src_pos_pattern_patch_setter(
    corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
) -> Tensor:
    """Patch one entry of one head's pattern; ``index = (layer, head, dest_pos, src_pos)``."""
    _, head, dest, src = _unpack(index, 4, "layer, head_index, dest_pos, src_pos")
    corrupted_activation[:, head, dest, src] = clean_activation[:, head, dest, src]
    return corrupted_activation


def _pandas():
    try:
        import pandas
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("index_df / make_df_from_ranges need pandas (pip install pandas)") from e
    return pandas


def make_df_from_ranges(column_max_ranges: Sequence[int], column_names: Sequence[str]) -> Any:
    """A pandas DataFrame of every index combination, the last column varying fastest."""
    rows = list(itertools.product(*(range(int(n)) for n in column_max_ranges)))
    return _pandas().DataFrame(rows, columns=list(column_names))


def setter_activation_patch(
    model: Any,
    corrupted_tokens: Tensor,
    clean_cache: Any,
    patching_metric: Callable[[Tensor], Tensor],
    patch_setter: Callable[[Tensor, Sequence[int], Tensor], Tensor],
    activation_name: str,
    index_axis_names: Sequence[str] | None = None,
    index_df: Any = None,
    return_index_df: bool = False,
) -> Tensor | tuple[Tensor, Any]:
    """TransformerLens's ``generic_activation_patch`` with a ``patch_setter``: one forward per site.

    Returns ``[max of each axis]`` (``index_axis_names``) or, with ``index_df``, one value per row.
    """
    if not callable(patch_setter):
        raise TypeError(f"patch_setter must be callable, got {type(patch_setter).__name__}")
    if (index_df is None) == (index_axis_names is None):
        raise ValueError("give exactly one of index_axis_names and index_df")
    flat = index_df is not None  # TransformerLens: one value per row of a given index_df
    if index_df is None:
        names = [index_axis_names] if isinstance(index_axis_names, str) else list(index_axis_names)
        bad = [n for n in names if n not in AXES]
        if bad or not names or names[0] != "layer":
            raise ValueError(f"index_axis_names must start with 'layer' and use {AXES}, got {names}")
        heads = model.cfg.n_heads
        if activation_name in ("k", "v"):
            heads = model.cfg.n_key_value_heads
        n_pos = corrupted_tokens.shape[-1]
        sizes = {"layer": model.cfg.n_layers, "pos": n_pos, "head_index": heads, "head": heads}
        sizes.update(src_pos=n_pos, dest_pos=n_pos)
        ranges = [sizes[n] for n in names]
        rows: list[list[int]] = [list(r) for r in itertools.product(*(range(n) for n in ranges))]
        out = torch.zeros(ranges)
        if return_index_df:
            index_df = make_df_from_ranges(ranges, names)
    else:
        rows = [[int(v) for v in row] for row in getattr(index_df, "values", index_df)]
        out = torch.zeros(len(rows))

    def hook(activation: Tensor, hook: Any, index: list[int], clean: Tensor) -> Tensor:
        return patch_setter(activation, index, clean)

    with torch.no_grad():
        for c, index in enumerate(rows):
            name = get_act_name(activation_name, index[0])
            fn = functools.partial(hook, index=index, clean=clean_cache[name])
            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, fn)])
            out[c if flat else tuple(index)] = float(patching_metric(logits))
    return (out, index_df) if return_index_df else out
