"""PyTorch module hooks fire in generation exactly as in ``model(tokens)`` (issue #12).

Generation decodes through the ordinary forward (``model.decode_step``), so ``register_forward_hook``,
``register_forward_pre_hook`` (on any submodule) and global ``register_module_forward_hook`` see every step.
Oracles: a greedy loop of full ``model(tokens)`` forwards with the same hook, and the same edit made as a lens
hook on ``blocks.0.hook_resid_post`` (the value a block returns, so the arithmetic is identical), which also
covers sampling-free beam search. Call counts are checked against the number of ``decode_step`` calls.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from tests.tiny import tiny_model

PROMPT = torch.tensor([[5, 9, 14, 3, 40], [7, 7, 21, 30, 2]])
N_NEW = 7

RUNS: dict[str, Callable] = {
    "generate": lambda m: m.generate(PROMPT, N_NEW, stop_at_eos=False),
    "no_kv_cache": lambda m: m.generate(PROMPT, N_NEW, stop_at_eos=False, use_past_kv_cache=False),
    "generate_stream": lambda m: torch.cat(
        (PROMPT, torch.stack(list(m.generate_stream(PROMPT, N_NEW, stop_at_eos=False)), 1)), 1
    ),
    "return_cache": lambda m: m.generate(
        PROMPT, N_NEW, stop_at_eos=False, return_cache=True, names_filter="blocks.1.hook_resid_pre"
    ),
    "beams": lambda m: m.generate(PROMPT, N_NEW, stop_at_eos=False, num_beams=3),
}
GREEDY = ("generate", "no_kv_cache", "generate_stream", "return_cache")


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    return tiny_model(request.param)


def _vector(model) -> torch.Tensor:
    return torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))


def _tokens(out):
    return out.output if hasattr(out, "output") else out


def _greedy_loop(model, n: int) -> torch.Tensor:
    """The oracle: argmax of full forwards, one token at a time (whatever hooks are attached fire here)."""
    seq = PROMPT.clone()
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat((seq, model(seq)[:, -1].float().argmax(-1, keepdim=True)), 1)
    return seq


class _CountSteps:
    """Counts ``decode_step`` calls (an instance attribute wrapping the method; removed afterwards)."""

    def __init__(self, model):
        self.model, self.n = model, 0

    def __enter__(self):
        inner = self.model.decode_step

        def counted(*args, **kwargs):
            self.n += 1
            return inner(*args, **kwargs)

        self.model.decode_step = counted
        return self

    def __exit__(self, *exc):
        del self.model.decode_step


def _lens_oracle(model, run: str, v: torch.Tensor):
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x + v)]):
        return RUNS[run](model)


def _module_hook_cases(model, v):
    """(name, install) pairs: each install attaches a hook that adds ``v`` to what block 0 returns."""

    def fwd(module, args, output):
        return output + v

    def pre(module, args):
        return (args[0] + v, *args[1:])

    def global_fwd(module, args, output):
        return output + v if module is model.blocks[0] else None

    return {
        "forward_hook": lambda: model.blocks[0].register_forward_hook(fwd),
        "forward_pre_hook": lambda: model.blocks[1].register_forward_pre_hook(pre),
        "global_forward_hook": lambda: nn.modules.module.register_module_forward_hook(global_fwd),
        # HookPoints are modules too: torch hooks on them fire (through nn.Module.__call__)
        "hookpoint_forward_hook": lambda: model.blocks[0].hook_resid_post.register_forward_hook(fwd),
        "hookpoint_forward_pre_hook": lambda: model.blocks[1].hook_resid_pre.register_forward_pre_hook(pre),
    }


KINDS = [
    "forward_hook",
    "forward_pre_hook",
    "global_forward_hook",
    "hookpoint_forward_hook",
    "hookpoint_forward_pre_hook",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("run", list(RUNS))
def test_module_hook_changes_generation_as_it_changes_the_forward(model, run, kind):
    v = _vector(model)
    plain = _tokens(RUNS[run](model))
    want = _tokens(_lens_oracle(model, run, v))
    assert not torch.equal(want, plain), "the edit must change the tokens for the test to mean anything"
    handle = _module_hook_cases(model, v)[kind]()
    try:
        got = _tokens(RUNS[run](model))
        assert torch.equal(got, want)
        if run in GREEDY:
            assert torch.equal(got, _greedy_loop(model, N_NEW))
    finally:
        handle.remove()
    assert torch.equal(_tokens(RUNS[run](model)), plain)  # removed: back to the unhooked tokens


@pytest.mark.parametrize("run", list(RUNS))
def test_module_hooks_fire_once_per_decode_step(model, run):
    calls = {"fwd": 0, "pre": 0, "global": 0, "root": 0}

    def fwd(module, args, output):
        calls["fwd"] += 1

    def pre(module, args):
        calls["pre"] += 1

    def global_fwd(module, args, output):
        if module is model.blocks[1].attn:
            calls["global"] += 1

    def root(module, args, kwargs, output):
        calls["root"] += 1

    handles = [
        model.blocks[0].mlp.register_forward_hook(fwd),
        model.blocks[1].register_forward_pre_hook(pre),
        nn.modules.module.register_module_forward_hook(global_fwd),
        model.register_forward_hook(root, with_kwargs=True),
    ]
    try:
        with _CountSteps(model) as steps:
            out = RUNS[run](model)
    finally:
        for h in handles:
            h.remove()
    assert _tokens(out).shape[1] == PROMPT.shape[1] + N_NEW
    assert steps.n >= N_NEW  # a step per new token (the last one may need no forward)
    assert calls == dict.fromkeys(calls, steps.n)


def test_return_cache_records_the_hooked_activation(model):
    """The recorded residual is the one the module hook produced, at every position of every step."""
    v = _vector(model)
    handle = model.blocks[0].register_forward_hook(lambda module, args, output: output + v)
    try:
        out = RUNS["return_cache"](model)
        tokens = out.output
        _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_pre")
    finally:
        handle.remove()
    recorded, full = out.cache["blocks.1.hook_resid_pre"], cache["blocks.1.hook_resid_pre"]
    assert recorded.shape == full.shape
    torch.testing.assert_close(recorded, full, atol=1e-5, rtol=1e-5)  # KV-cached steps vs one forward
    _, plain = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_pre")
    assert not torch.allclose(recorded, plain["blocks.1.hook_resid_pre"], atol=1e-3)
