"""`HookCache`: the activations a `run_with_cache` call recorded, as a dict-like mapping.

This is the hook layer's cache (any :class:`lens.HookedRootModule` returns one); transformers return
:class:`lens.ActivationCache`, which adds residual-stream analysis (:mod:`lens.analysis`).

Keys are full hook names; TransformerLens shorthand works too:

>>> logits, cache = model.run_with_cache(tokens)
>>> cache["blocks.0.attn.hook_pattern"].shape   # [batch, head, query_pos, key_pos]
>>> cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
True
>>> cache["resid_pre", -1]                      # negative layers count from the end
>>> cache["scale", 2, "ln1"]                    # blocks.2.ln1.hook_scale
>>> cache["scale2ln1"], cache["pattern0"]       # TransformerLens's string shorthand (lens.names.get_act_name)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from lens.names import get_act_name, unknown_hook_error
from lens.utilities.slicing import Slice, SliceInput


class HookCache:
    """A mapping from hook names to cached activations, tied to the model that produced them."""

    def __init__(self, cache_dict: dict[str, torch.Tensor], model: Any, has_batch_dim: bool = True):
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim

    # -- key handling ---------------------------------------------------------------------------
    def _n_layers(self) -> int | None:
        cfg = getattr(self.model, "cfg", None)
        return getattr(cfg, "n_layers", None)

    def _key(self, key: Any) -> str:
        if isinstance(key, str):
            return get_act_name(key) if "." not in key and not key.startswith("hook_") else key
        if isinstance(key, tuple):
            if not key or not isinstance(key[0], str):
                raise TypeError(f"cache keys are a hook name or (name, layer[, layer_type]), got {key!r}")
            name, layer = key[0], key[1] if len(key) > 1 else None
            layer_type = key[2] if len(key) > 2 else None
            if layer is not None:
                if isinstance(layer, bool) or not isinstance(layer, int):
                    raise TypeError(f"layer index must be an int, got {layer!r}")
                n = self._n_layers()
                if n is not None:
                    if not -n <= layer < n:
                        raise ValueError(f"layer {layer} is out of range for a model with {n} layers")
                    layer %= n
            return get_act_name(name, layer, layer_type)
        raise TypeError(f"cache keys are a hook name or (name, layer[, layer_type]), got {key!r}")

    def __getitem__(self, key: Any) -> torch.Tensor:
        full = self._key(key)
        try:
            return self.cache_dict[full]
        except KeyError:
            valid = list(self.cache_dict) or list(getattr(self.model, "hook_dict", {}))
            if full in getattr(self.model, "hook_dict", {}):
                raise ValueError(
                    f"{full!r} is a hook of this model but was not cached; widen names_filter in run_with_cache"
                ) from None
            raise unknown_hook_error(full, valid) from None

    def __contains__(self, key: Any) -> bool:
        try:
            return self._key(key) in self.cache_dict
        except (ValueError, TypeError):
            return False

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"{type(self).__name__} with keys {list(self.cache_dict)}"

    # -- transforms -----------------------------------------------------------------------------
    def to(self, device: str | torch.device, move_model: bool = False) -> HookCache:
        """Move every cached tensor (and optionally the model) to ``device``; returns self."""
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        if move_model and self.model is not None:
            self.model.to(device)
        return self

    def toggle_autodiff(self, mode: bool = False) -> None:
        torch.set_grad_enabled(mode)

    def remove_batch_dim(self) -> HookCache:
        """Drop the batch dimension (batch size must be 1); returns self."""
        if not self.has_batch_dim:
            return self
        for k, v in self.cache_dict.items():
            if v.shape[0] != 1:
                raise ValueError(f"remove_batch_dim needs batch size 1, but {k} has batch size {v.shape[0]}")
        self.cache_dict = {k: v[0] for k, v in self.cache_dict.items()}
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: Slice | SliceInput) -> HookCache:
        """A new cache holding only ``batch_slice`` of every activation (a :class:`lens.utils.Slice` or
        anything it takes); an int drops the batch dimension. The tensors are views where indexing allows.

        >>> cache.apply_slice_to_batch_dim(0)["resid_pre", 0].shape       # [pos, d_model]
        >>> cache.apply_slice_to_batch_dim((0, 2)).has_batch_dim          # rows 0..1
        True
        """
        batch_slice = Slice(batch_slice)
        if batch_slice.mode == "identity":
            return type(self)(dict(self.cache_dict), self.model, has_batch_dim=self.has_batch_dim)
        if not self.has_batch_dim:
            raise ValueError("this cache has no batch dimension (remove_batch_dim was applied)")
        out = {k: batch_slice.apply(v, dim=0) for k, v in self.cache_dict.items()}
        return type(self)(out, self.model, has_batch_dim=batch_slice.mode != "int")
