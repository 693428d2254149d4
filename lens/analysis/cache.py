"""`ActivationCache`: the activations a transformer's `run_with_cache` call recorded, with analysis.

A :class:`lens.hook_cache.HookCache` (dict-like, TransformerLens key shorthand) plus the residual-stream
analysis of :mod:`lens.analysis.residual` (``decompose_resid``, ``stack_head_results``, ``logit_attrs``...).

>>> logits, cache = model.run_with_cache(tokens)
>>> cache["blocks.0.attn.hook_pattern"].shape   # [batch, head, query_pos, key_pos]
>>> cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
True
>>> cache["resid_pre", -1]                      # negative layers count from the end
>>> cache["scale", 2, "ln1"]                    # blocks.2.ln1.hook_scale
>>> cache["scale2ln1"], cache["pattern0"]       # TransformerLens's string shorthand
>>> cache.decompose_resid(pos_slice=(1, 4))     # pos_slice: a lens.utils.Slice input (tuple = slice(1, 4))
"""

from __future__ import annotations

from lens.analysis.residual import ActivationCacheAnalysisMixin
from lens.hook_cache import HookCache


class ActivationCache(ActivationCacheAnalysisMixin, HookCache):
    """A mapping from hook names to cached activations, tied to the model that produced them."""


__all__ = ["ActivationCache"]
