"""Recording activations across generation steps into one :class:`ActivationCache`.

``generate(..., return_cache=True)`` attaches a recording hook to every hook point ``names_filter``
selects. The prefill forward contributes the prompt positions and each decode step the new position
(without a KV cache a step recomputes every position; only the newest is kept), so each activation
ends up ``[batch, prompt + generated, ...]``, concatenated along ``pos``.

Attention scores and patterns ``[batch, head, query, key]`` have a different key length on every step
(and a sliding-window layer only sees its window), so each step's keys are placed at their sequence
positions in a full-length key axis: the result is ``[batch, head, pos, pos]`` with 0 (pattern) or
``-inf`` (scores) for keys a query did not see — exactly what one full forward would give.

>>> rec = ActivationRecorder(model, lambda name: name.endswith("hook_pattern"))
>>> with model.hooks(fwd_hooks=rec.hooks()):
...     rec.begin_step(n_new=5, q_end=5)
...     model(prompt)
>>> cache = rec.finish()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

_KEYED = ("hook_pattern", "hook_attn_scores")


class ActivationRecorder:
    """Collects the activations of the selected hook points over several forwards."""

    def __init__(self, model: Any, keep: Callable[[str], bool]):
        self.model = model
        self.names = [name for name in model.hook_dict if keep(name)]
        self.steps: dict[str, list[tuple[Tensor, int]]] = {name: [] for name in self.names}
        self.n_new = 0
        self.q_end = 0

    def begin_step(self, n_new: int, q_end: int) -> None:
        """The next forward adds ``n_new`` positions ending at sequence position ``q_end``."""
        self.n_new, self.q_end = n_new, q_end

    def _save(self, act: Tensor, hook: Any) -> None:
        name = hook.name
        if name.endswith(_KEYED):
            act = act[:, :, -self.n_new :]
        else:
            act = act[:, -self.n_new :]
        self.steps[name].append((act.detach(), self.q_end))

    def hooks(self) -> list[tuple[str, Callable]]:
        return [(name, self._save) for name in self.names]

    def finish(self) -> Any:
        """Concatenate the steps along ``pos`` (keys of scores/patterns placed at their positions)."""
        out = {}
        for name, steps in self.steps.items():
            if not steps:
                continue
            if not name.endswith(_KEYED):
                out[name] = torch.cat([t for t, _ in steps], dim=1)
                continue
            total = max(q_end for _, q_end in steps)
            first = steps[0][0]
            fill = 0.0 if name.endswith("hook_pattern") else float("-inf")
            n_q = sum(t.shape[2] for t, _ in steps)
            full = torch.full((*first.shape[:2], n_q, total), fill, dtype=first.dtype, device=first.device)
            row = 0
            for t, q_end in steps:
                q, k = t.shape[2], t.shape[3]
                full[:, :, row : row + q, q_end - k : q_end] = t
                row += q
            out[name] = full
        return self.model.cache_class(out, self.model)  # the model's cache type (lens.ActivationCache)
