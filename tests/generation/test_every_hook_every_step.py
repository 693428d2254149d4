"""Every hook point of every documented layout (the hook reference's, incl. soft caps, sandwich and post-only
norms, q/k norms, local rotary bases and mixture-of-experts) fires once per forward of ``generate``: the
prompt, then every decode step, with ``pos = 1`` on decode steps."""

from __future__ import annotations

import pytest
import torch

from lens.config import TransformerConfig
from lens.hook_reference import _SIZES, LAYOUTS
from lens.model import HookedTransformer


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=range(len(LAYOUTS)))
def test_every_hook_fires_at_every_generate_step(layout):
    model = HookedTransformer(TransformerConfig(**{**_SIZES, **LAYOUTS[layout]}), seed=0).eval()
    calls: dict[str, list[tuple[int, ...]]] = {name: [] for name in model.hook_dict}

    def record(t, hook):
        calls[hook.name].append(tuple(t.shape))

    prompt = torch.randint(0, _SIZES["d_vocab"], (2, 5), generator=torch.Generator().manual_seed(0))
    with model.hooks([(name, record) for name in calls]):
        model(prompt)
    per_forward = {name: len(seen) for name, seen in calls.items()}  # 1, or 3 for ln1 under split q/k/v input
    assert min(per_forward.values()) >= 1, [name for name, n in per_forward.items() if n == 0]
    for seen in calls.values():
        seen.clear()
    with model.hooks([(name, record) for name in calls]):
        model.generate(prompt, max_new_tokens=4, do_sample=False, stop_at_eos=False)
    silent = sorted(name for name, seen in calls.items() if len(seen) != 4 * per_forward[name])
    assert not silent, f"hooks that did not fire on every forward (prompt + 3 decode steps): {silent}"
    assert calls["blocks.0.hook_resid_pre"] == [(2, 5, _SIZES["d_model"])] + [(2, 1, _SIZES["d_model"])] * 3
