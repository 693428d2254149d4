"""The hook-free generation loop computes exactly what the module path computes, for every family."""

from __future__ import annotations

import pytest
import torch

from lens.generation import KVCache, fast_step
from tests.generation._hf import pair
from tests.generation.test_kv_cache import prompts, variants


def _steps(model, kv_cache_dtype, hooked: bool) -> list[torch.Tensor]:
    """Last-position logits of a left-padded prefill and 12 teacher-forced decode steps."""
    tokens, mask = prompts()
    follow = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(5))
    cache = KVCache.for_model(model, 2, tokens.shape[1] + 12, kv_cache_dtype=kv_cache_dtype)
    watch = [("blocks.0.hook_resid_pre", lambda x, hook: None)] if hooked else []
    out = []
    with torch.inference_mode(), model.hooks(fwd_hooks=watch):
        assert fast_step.applies(model) is not hooked
        out.append(model._next_logits(tokens, mask, cache))
        for t in range(follow.shape[1]):
            out.append(model._next_logits(follow[:, t : t + 1], torch.ones(2, 1, dtype=torch.long), cache))
    return out


@pytest.mark.parametrize("kv_cache_dtype", [None, "int8"])
@pytest.mark.parametrize("arch,overrides", variants(), ids=lambda v: v if isinstance(v, str) else "-".join(v) or "")
def test_fast_step_equals_module_path(arch, overrides, kv_cache_dtype):
    _, model = pair(arch, **overrides)
    fast = _steps(model, kv_cache_dtype, hooked=False)
    slow = _steps(model, kv_cache_dtype, hooked=True)
    for step, (a, b) in enumerate(zip(fast, slow)):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=f"{arch}: step {step}")


def test_any_hook_or_flag_turns_the_fast_path_off():
    _, model = pair("LlamaForCausalLM")
    assert fast_step.applies(model)
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", lambda x, hook: None)]):
        assert not fast_step.applies(model)
    assert fast_step.applies(model)
    model.cfg.use_attn_result = True
    try:
        assert not fast_step.applies(model)
    finally:
        model.cfg.use_attn_result = False


def test_hooks_fire_during_generate():
    _, model = pair("GPT2LMHeadModel")
    seen = []
    tokens, _ = prompts()
    with model.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", lambda x, hook: seen.append(x.shape[1]))]):
        model.generate(tokens, 4, stop_at_eos=False)
    assert seen == [tokens.shape[1], 1, 1, 1]


def test_a_hook_added_mid_stream_fires_from_the_next_step():
    """The fast path re-checks for hooks every step (cheaply, via the hook epoch), not once per call."""
    _, model = pair("GPT2LMHeadModel")
    tokens, _ = prompts()
    seen: list[int] = []
    point = model.hook_dict["blocks.1.mlp.hook_post"]
    handle = None
    try:
        for i, _tok in enumerate(model.generate_stream(tokens[:1], 6, stop_at_eos=False)):
            if i == 2:
                handle = point.add_hook(lambda x, hook: seen.append(x.shape[1]))
            if i == 4:
                handle.remove()
    finally:
        if handle is not None:
            handle.remove()
    assert seen == [1, 1]  # the steps that computed tokens 3 and 4 (0-based), each with pos = 1
