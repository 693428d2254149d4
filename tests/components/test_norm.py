"""LayerNorm's three paths (no scale hook; read-only observers such as caching; an editing hook) agree."""

from __future__ import annotations

import pytest
import torch

from lens.components.norm import LayerNorm


def _run(ln, x, hook):
    seen = {}

    def observe(t, hook):
        seen[hook.name] = t.clone()
        return t if hook_edits else None

    hook_edits = hook == "edit"
    if hook != "none":
        if hook == "read":
            observe.read_only = True
        ln.hook_scale.add_hook(observe)
    try:
        return ln(x), seen.get(ln.hook_scale.name)
    finally:
        ln.hook_scale.remove_hooks()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_layernorm_paths_agree(dtype):
    g = torch.Generator().manual_seed(0)
    ln = LayerNorm(48, eps=1e-5, dtype=dtype)
    ln.hook_scale.name = "ln.hook_scale"
    with torch.no_grad():
        ln.w.copy_(torch.randn(48, generator=g))
        ln.b.copy_(torch.randn(48, generator=g))
    x = (torch.randn(2, 5, 48, generator=g) * 3 + 1).to(dtype)
    plain, _ = _run(ln, x, "none")
    read, scale_read = _run(ln, x, "read")
    edit, scale_edit = _run(ln, x, "edit")
    exact = (x.double().var(-1, keepdim=True, correction=0) + 1e-5).sqrt()
    tol = 1e-6 if dtype != torch.bfloat16 else 2e-2
    torch.testing.assert_close(read, plain, atol=0, rtol=0)
    torch.testing.assert_close(edit, plain, atol=tol * 10, rtol=tol * 10)
    assert scale_read.shape == scale_edit.shape == (2, 5, 1)
    assert scale_read.dtype == scale_edit.dtype
    torch.testing.assert_close(scale_read.double(), exact, atol=tol, rtol=tol)
    torch.testing.assert_close(scale_edit.double(), exact, atol=tol, rtol=tol)
