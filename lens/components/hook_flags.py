"""TransformerLens's ``set_use_*`` toggles: optional hook points switched on or off after construction.

A model built with ``use_attn_result=False`` has no ``attn.hook_result``; ``model.set_use_attn_result(True)``
turns the flag on, creates the hook points in every block (each component's ``sync_hooks`` knows which),
and re-runs ``setup()`` so ``hook_dict``, ``run_with_cache`` and ``names_filter`` see them. The result
computes exactly what a model constructed with the flag computes. Turning a flag off removes the hook
points (and the hooks attached to them).

The config is replaced by a validated copy with the new flag, shared by every module of this model: a
``TransformerConfig`` object given to several models is never changed behind another model's back.

>>> model.set_use_attn_result(True)
>>> "blocks.0.attn.hook_result" in model.hook_dict
True
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lens.hooks import HookPoint


def stale_flag_error(flag: str) -> ValueError:
    """The error a component raises when ``cfg.<flag>`` is on but its hook points were never created: the flag
    was assigned directly on a built model's config instead of through the setter."""
    setter = "set_" + flag if flag.startswith("use_") else f"set_{flag}"
    return ValueError(
        f"cfg.{flag} is True but this model was built without its hook points; after construction, "
        f"call model.{setter}(True) instead of assigning cfg.{flag}"
    )


class HookFlagsMixin:
    """``set_use_attn_result``, ``set_use_split_qkv_input``, ``set_use_hook_mlp_in``, ``set_use_attn_in``,
    ``set_use_hook_tokens`` and ``set_ungroup_grouped_query_attention`` for a model with ``cfg``, ``blocks``
    and ``setup()``."""

    cfg: Any

    def sync_hooks(self) -> None:
        """Create or remove every optional hook point to match ``self.cfg`` (``hook_tokens`` here, the rest in
        the blocks), then name them all (``setup()``)."""
        on = self.cfg.use_hook_tokens
        if on and "hook_tokens" not in self._modules:
            self.hook_tokens = HookPoint()  # [batch, pos] token ids
        elif not on and "hook_tokens" in self._modules:
            del self.hook_tokens
        for block in self.blocks:
            block.sync_hooks()
        self.setup()

    def _set_flag(self, flag: str, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool, got {type(value).__name__} ({value!r})")
        old = self.cfg
        if getattr(old, flag) == value:
            return
        new = dataclasses.replace(old, **{flag: value})
        for module in self.modules():
            if getattr(module, "cfg", None) is old:
                module.cfg = new
        self.sync_hooks()

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Toggle ``blocks.{i}.attn.hook_result`` ``[batch, pos, head, d_model]``: each head's output
        (memory: ``n_heads`` times ``hook_attn_out``)."""
        self._set_flag("use_attn_result", use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Toggle ``blocks.{i}.hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` ``[batch, pos, head, d_model]``
        (k/v: ``n_key_value_heads``, or ``n_heads`` when ungrouped): separate inputs for each head's q, k, v."""
        self._set_flag("use_split_qkv_input", use_split_qkv_input)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Toggle ``blocks.{i}.hook_mlp_in`` ``[batch, pos, d_model]``. ValueError on an attention-only model."""
        if use_hook_mlp_in and self.cfg.attn_only:
            raise ValueError("set_use_hook_mlp_in(True): this model is attention-only (attn_only=True), it has no MLP")
        self._set_flag("use_hook_mlp_in", use_hook_mlp_in)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Toggle ``blocks.{i}.hook_attn_in`` ``[batch, pos, head, d_model]``: one input per query head. Under
        grouped-query attention key/value head ``g`` reads the input of the first query head of its group."""
        self._set_flag("use_attn_in", use_attn_in)

    def set_use_hook_tokens(self, use_hook_tokens: bool) -> None:
        """Toggle ``hook_tokens`` ``[batch, pos]``: the token ids entering the embedding (a hook may replace them,
        same shape and dtype; the loss then uses the replaced ids, as TransformerLens)."""
        self._set_flag("use_hook_tokens", use_hook_tokens)

    def set_ungroup_grouped_query_attention(self, ungroup_grouped_query_attention: bool) -> None:
        """Under grouped-query attention, give ``hook_k`` / ``hook_v`` / ``hook_rot_k`` one key/value head per
        query head (``n_heads``; head ``i`` is key/value head ``i // (n_heads // n_key_value_heads)``), as
        TransformerLens. Same numbers; a KV cache made before the toggle no longer fits (make a new one)."""
        self._set_flag("ungroup_grouped_query_attention", ungroup_grouped_query_attention)
