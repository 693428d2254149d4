"""KVCache: cached decoding equals recomputation for every family, ring buffers, int8, preallocation."""

from __future__ import annotations

import pytest
import torch

from lens.generation import KVCache
from tests.generation._hf import archs, pair

STEPS = 12  # longer than the sliding window (5) so ring buffers wrap


def variants() -> list[tuple[str, dict]]:
    out = [(arch, {}) for arch in archs()]
    if "Qwen2ForCausalLM" in archs():  # sliding window on layer 1 only: a ring and a full layer side by side
        out.append(("Qwen2ForCausalLM", dict(use_sliding_window=True, max_window_layers=1, sliding_window=4)))
    return out


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, 97, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0  # row 1 is left-padded: 4 real tokens
    return tokens, mask


def step_logits(model, **kw) -> list[torch.Tensor]:
    """Logits at the last position of every forward generate runs."""
    seen = []

    def grab(x, hook):
        seen.append(model.unembed(x[:, -1]).float())

    tokens, mask = prompts()
    with model.hooks(fwd_hooks=[("ln_final.hook_normalized", grab)]):
        model.generate(tokens, STEPS, attention_mask=mask, stop_at_eos=False, **kw)
    return seen


@pytest.mark.parametrize("arch,overrides", variants(), ids=lambda v: v if isinstance(v, str) else "-".join(v) or "")
def test_cached_equals_uncached_every_step(arch, overrides):
    _, model = pair(arch, **overrides)
    cached = step_logits(model)
    uncached = step_logits(model, use_past_kv_cache=False)
    assert len(cached) == len(uncached) == STEPS
    for step, (a, b) in enumerate(zip(cached, uncached)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"{arch}: step {step}")


def test_ring_buffer_holds_only_the_window():
    _, model = pair("MistralForCausalLM")
    cache = KVCache.for_model(model, batch=2, max_len=40)
    assert [s.k.shape[2] for s in cache.layers] == [5, 5]
    assert all(s.ring for s in cache.layers)
    full = KVCache.for_model(model, batch=2, max_len=4)  # window >= cache: a plain buffer
    assert not any(s.ring for s in full.layers)


@pytest.mark.parametrize("arch", ["MistralForCausalLM", "LlamaForCausalLM"])
@pytest.mark.parametrize("kv_cache_dtype", [None, "int8"])
def test_chunked_forward_through_cache_matches_full_forward(arch, kv_cache_dtype):
    """Several multi-token forwards (prompt in chunks, ring wrapping mid-chunk) equal one full forward."""
    _, model = pair(arch)
    tokens = torch.randint(3, 97, (2, 13), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[0, :2] = 0
    ref = model(tokens, attention_mask=mask)
    cache = KVCache.for_model(model, 2, 13, kv_cache_dtype=kv_cache_dtype)
    outs = []
    for lo, hi in [(0, 4), (4, 11), (11, 12), (12, 13)]:
        outs.append(model(tokens[:, lo:hi], attention_mask=mask[:, lo:hi], past_kv_cache=cache))
    assert cache.offset == 13
    got = torch.cat(outs, dim=1)
    real = mask.bool()
    atol = 1e-4 if kv_cache_dtype is None else 0.05
    torch.testing.assert_close(got[real], ref[real], atol=atol, rtol=0)


def test_buffers_are_preallocated_and_written_in_place():
    _, model = pair("LlamaForCausalLM")
    cache = KVCache.for_model(model, 1, 10)
    ptrs = [(s.k.data_ptr(), s.v.data_ptr()) for s in cache.layers]
    tokens = torch.tensor([[5, 6, 7]])
    model(tokens, past_kv_cache=cache)
    for t in range(4):
        model(torch.tensor([[10 + t]]), past_kv_cache=cache)
    assert cache.offset == 7
    assert [(s.k.data_ptr(), s.v.data_ptr()) for s in cache.layers] == ptrs
    assert cache.layers[0].k.shape == (1, model.cfg.n_key_value_heads, 10, model.cfg.d_head)
    with pytest.raises(ValueError, match="holds 10 positions; 7 are used and 4 more do not fit"):
        model(torch.tensor([[1, 2, 3, 4]]), past_kv_cache=cache)


def teacher_forced_logits(model, tokens, n_prompt, kv_cache_dtype=None) -> torch.Tensor:
    """Logits of every decode step over fixed ``tokens`` (prefill ``n_prompt``, then one at a time)."""
    cache = KVCache.for_model(model, tokens.shape[0], tokens.shape[1], kv_cache_dtype=kv_cache_dtype)
    out = [model(tokens[:, :n_prompt], past_kv_cache=cache)[:, -1]]
    for t in range(n_prompt, tokens.shape[1]):
        out.append(model(tokens[:, t : t + 1], past_kv_cache=cache)[:, -1])
    return torch.stack(out, 1)


@pytest.mark.parametrize("arch", archs())
def test_int8_cache_memory_and_accuracy(arch):
    _, model = pair(arch)
    fp = KVCache.for_model(model, 2, 32)
    q8 = KVCache.for_model(model, 2, 32, kv_cache_dtype="int8")
    d_head = model.cfg.d_head
    assert q8.nbytes / fp.nbytes == pytest.approx((1 + 4 / d_head) / 4)
    tokens = torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(3))
    a = teacher_forced_logits(model, tokens, 6)
    b = teacher_forced_logits(model, tokens, 6, "int8")
    torch.testing.assert_close(b[:, 0], a[:, 0], atol=0, rtol=0)  # the prompt attends at full precision
    worst = (a - b).abs().max().item()
    assert 0 < worst < 0.1  # logits here are ~4 in size; see docs/generation.md for the numbers


def test_reorder_selects_rows():
    _, model = pair("GPT2LMHeadModel")
    cache = KVCache.for_model(model, 3, 6)
    tokens = torch.tensor([[4, 5], [6, 7], [8, 9]])
    model(tokens, past_kv_cache=cache)
    k0, ptr = cache.layers[0].k.clone(), cache.layers[0].k.data_ptr()
    cache.reorder(torch.tensor([2, 2, 0]))
    torch.testing.assert_close(cache.layers[0].k[:, :, :2], k0[[2, 2, 0], :, :2])
    assert cache.layers[0].k.data_ptr() == ptr  # reordered in place, in the preallocated buffer
    nxt = model(torch.tensor([[1], [1], [1]]), past_kv_cache=cache)[:, -1]
    ref = model(torch.tensor([[8, 9, 1], [8, 9, 1], [4, 5, 1]]))[:, -1]
    torch.testing.assert_close(nxt, ref, atol=1e-5, rtol=0)


def test_bad_cache_arguments():
    _, model = pair("GPT2LMHeadModel")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        KVCache.for_model(model, 1, 4, kv_cache_dtype="int2")
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        KVCache.for_model(model, 1, 0)
    cache = KVCache.for_model(model, 1, 4)
    cache.prepare(None, 2)
    with pytest.raises(ValueError, match="does not match the prepared step"):
        cache.advance(1)
