"""PyTorch module hooks on a HookPoint fire as on any module (``register_forward_hook`` & co., global hooks).

A HookPoint runs its lens hooks itself for speed; when a PyTorch hook is set on it (or a global module hook
is set), it is called through ``nn.Module.__call__`` so that hook fires too, around the lens hooks, and
components treat it as hooked (attention materialises the pattern, norms report the scale). Oracles: the
same edit made as a lens hook, and the activation the cache records.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.tiny import tiny_model

TOKENS = torch.tensor([[5, 9, 14, 3, 40, 7], [7, 7, 21, 30, 2, 11]])


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    return tiny_model(request.param)


def _lens_edit(model, name, fn):
    with model.hooks(fwd_hooks=[(name, lambda x, hook: fn(x))]), torch.no_grad():
        return model(TOKENS)


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.0.ln1.hook_scale",
                                  "blocks.1.attn.hook_z", "ln_final.hook_normalized"])  # fmt: skip
def test_forward_hook_on_a_hook_point_edits_as_a_lens_hook(model, name):
    point = model.hook_dict[name]
    with torch.no_grad():
        plain = model(TOKENS)
    expected = _lens_edit(model, name, lambda x: x * 0.5)
    handle = point.register_forward_hook(lambda module, args, out: out * 0.5)
    try:
        assert point.has_hooks and point.may_edit
        with torch.no_grad():
            got = model(TOKENS)
    finally:
        handle.remove()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, plain)
    assert not point.has_hooks
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), plain, atol=0, rtol=0)


def test_pre_hook_and_observer_see_the_activation_the_cache_records(model):
    seen = {}
    point = model.blocks[1].attn.hook_pattern  # only computed when someone watches it
    handle = point.register_forward_hook(lambda module, args, out: seen.setdefault("pattern", out.detach().clone()))
    pre = model.blocks[0].hook_resid_pre.register_forward_pre_hook(lambda m, args: seen.setdefault("pre", args[0]))
    try:
        _, cache = model.run_with_cache(TOKENS)
    finally:
        handle.remove()
        pre.remove()
    torch.testing.assert_close(seen["pattern"], cache["pattern", 1], atol=0, rtol=0)
    torch.testing.assert_close(seen["pre"], cache["blocks.0.hook_resid_pre"], atol=0, rtol=0)


def test_order_is_torch_pre_hook_then_lens_hooks_then_torch_forward_hook(model):
    order = []
    point = model.blocks[0].hook_resid_mid
    handles = [
        point.register_forward_pre_hook(lambda m, args: order.append("torch pre")),
        point.register_forward_hook(lambda m, args, out: order.append("torch forward")),
    ]
    try:
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, hook: order.append("lens"))]):
            model(TOKENS)
    finally:
        for h in handles:
            h.remove()
    assert order == ["torch pre", "lens", "torch forward"]


def test_global_module_hook_reaches_hook_points(model):
    names = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, args, out: names.append(getattr(module, "name", None)) if hasattr(module, "ctx") else None
    )
    try:
        _, cache = model.run_with_cache(TOKENS)
        with torch.no_grad():
            model(TOKENS)
    finally:
        handle.remove()
    fired = set(names) - {None}
    assert set(cache.keys()) <= fired  # every hook point the cache saw was also seen by the global hook


def test_full_backward_hook_on_a_hook_point_gets_the_gradient(model):
    grads = {}
    point = model.blocks[0].hook_resid_post

    def keep(module, grad_input, grad_output):
        grads["g"] = grad_output[0].detach().clone()

    handle = point.register_full_backward_hook(keep)
    try:
        with model.hooks(
            bwd_hooks=[("blocks.0.hook_resid_post", lambda g, hook: grads.__setitem__("lens", g.clone()))]
        ):
            model(TOKENS, return_type="loss").backward()
    finally:
        handle.remove()
    torch.testing.assert_close(grads["g"], grads["lens"], atol=1e-7, rtol=1e-6)
