"""The 4-bit KV cache (``kv_cache_dtype="int4"``): packing, error bound, memory, accuracy per family.

Oracles: exact grid values (packing must be lossless on them), the quantization bound ``|x - deq| <= scale / 2``,
the allocated tensors' sizes, an fp32 cache whose stored keys/values are fake-quantized by plain arithmetic
after each forward (the int4 cache must give the same logits), and the fp32 cache.
Rollback (``truncate``) is tested with the other cache dtypes in test_speculative.py.
"""

from __future__ import annotations

import pytest
import torch

from lens.generation import KVCache
from lens.generation.kv_quant import dequantize_int4, int4_group, pack_nibbles, quantize_int4, unpack_nibbles
from tests.generation._hf import archs, pair
from tests.generation.test_kv_cache import prompts, teacher_forced_logits, variants
from tests.tiny import tiny_cfg, tiny_model


def family_ids(v):
    return v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()) or "default"


# -- packing and the quantizer ------------------------------------------------------------------------
def test_nibbles_pack_two_per_byte_losslessly():
    every = torch.arange(256, dtype=torch.int32)
    pairs = torch.stack((every % 16, every // 16), -1).to(torch.uint8)  # every (low, high) nibble pair
    packed = pack_nibbles(pairs)
    assert packed.dtype == torch.uint8 and packed.shape == (256, 1)
    assert packed.squeeze(-1).tolist() == list(range(256))  # low nibble = even index, high = odd index
    torch.testing.assert_close(unpack_nibbles(packed), pairs, atol=0, rtol=0)


@pytest.mark.parametrize("d,group", [(8, 8), (16, 16), (64, 32), (128, 32), (64, 8)])
def test_round_trip_is_exact_on_the_grid(d, group):
    """Values ``q * s`` with ``q`` in -7..7 (each group reaching +-7) and float16 ``s`` come back exactly."""
    g = torch.Generator().manual_seed(0)
    n_groups = d // group
    q = torch.randint(-7, 8, (3, 5, n_groups, group), generator=g).float()
    q[..., 0] = torch.where(torch.rand(3, 5, n_groups, generator=g) < 0.5, -7.0, 7.0)  # max|q| = 7 per group
    s = torch.exp(torch.empty(3, 5, n_groups, 1).uniform_(-8, 8, generator=g)).half().float()
    x = (q * s).flatten(-2)
    packed, scale = quantize_int4(x, group)
    assert packed.shape == (3, 5, d // 2) and packed.dtype == torch.uint8
    assert scale.shape == (3, 5, n_groups) and scale.dtype == torch.float16
    torch.testing.assert_close(scale.float(), s.squeeze(-1), atol=0, rtol=0)
    torch.testing.assert_close(dequantize_int4(packed, scale, group), x, atol=0, rtol=0)


@pytest.mark.parametrize("magnitude", [1e-6, 1e-3, 1.0, 30.0, 1e4])
@pytest.mark.parametrize("d,group", [(8, 8), (64, 32)])
def test_error_is_at_most_half_a_step_per_group(magnitude, d, group):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, d, generator=g) * magnitude
    x[0, 0, :group] = 0.0  # an all-zero group
    packed, scale = quantize_int4(x, group)
    deq = dequantize_int4(packed, scale, group)
    err = (x - deq).abs().unflatten(-1, (-1, group))
    bound = scale.float()[..., None] / 2
    assert bool((err <= bound * (1 + 1e-6)).all()), (err / bound).max().item()
    assert torch.count_nonzero(deq[0, 0, :group]) == 0
    # the scale is the group's max|x| / 7 (float16, never below its smallest normal)
    want = (x.unflatten(-1, (-1, group)).abs().amax(-1) / 7).clamp_min(2**-14)
    torch.testing.assert_close(scale.float(), want, rtol=2**-10, atol=0)


def test_bfloat16_values_dequantize_to_bfloat16():
    x = torch.randn(2, 3, 32).bfloat16()
    packed, scale = quantize_int4(x, 32)
    deq = dequantize_int4(packed, scale, 32, torch.bfloat16)
    assert deq.dtype == torch.bfloat16
    assert bool(((x.float() - deq.float()).abs() <= scale.float().repeat_interleave(32, -1) * 0.51).all())


# -- memory -------------------------------------------------------------------------------------------
def allocated_bytes(cache: KVCache) -> int:
    """Every tensor the cache's layers hold, found by attribute (not through ``nbytes``)."""
    return sum(t.nbytes for s in cache.layers for t in vars(s).values() if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("arch", archs())
def test_memory_is_at_most_a_fifth_of_fp32(arch):
    _, model = pair(arch)
    assert model.cfg.dtype == torch.float32
    fp = KVCache.for_model(model, 2, 32)
    q4 = KVCache.for_model(model, 2, 32, kv_cache_dtype="int4")
    assert q4.nbytes == allocated_bytes(q4) and fp.nbytes == allocated_bytes(fp)
    group = min(32, model.cfg.d_head)
    ratio = q4.nbytes / fp.nbytes
    assert ratio == pytest.approx(1 / 8 + 1 / (2 * group))  # 0.5 byte per value + a 2-byte scale per group
    assert ratio <= 0.2


def test_memory_at_d_head_64():
    cfg = tiny_cfg("llama", d_model=256, n_heads=4)  # d_head 64, 2 kv heads
    fp = KVCache(cfg, batch=3, max_len=50)
    q4 = KVCache(cfg, batch=3, max_len=50, kv_cache_dtype="int4")
    q8 = KVCache(cfg, batch=3, max_len=50, kv_cache_dtype="int8")
    assert q4.layers[0].k.shape == (3, 2, 50, 32) and q4.layers[0].k_scale.shape == (3, 2, 50, 2)
    assert allocated_bytes(q4) / allocated_bytes(fp) == pytest.approx(0.140625)  # 1/8 + 1/64
    assert q4.nbytes < q8.nbytes / 1.8


# -- the cache against an oracle ----------------------------------------------------------------------
def fake_int4(x: torch.Tensor, group: int) -> torch.Tensor:
    """The int4 round trip in plain arithmetic, without packing: ``round(x / s).clamp(-7, 7) * s``."""
    xg = x.unflatten(-1, (-1, group))
    s = (xg.abs().amax(-1, keepdim=True) / 7).clamp(2**-14, 65504).half().float()
    return (torch.round(xg / s).clamp(-7, 7) * s).flatten(-2)


@pytest.mark.parametrize("arch,overrides", variants(), ids=family_ids)
def test_cache_equals_fp32_cache_with_fake_quantized_history(arch, overrides):
    """Chunked prefill, padding, ring wrap: logits equal an fp32 cache whose stored keys/values are replaced by
    their int4 round trip after every forward (the current forward's own tokens stay at full precision)."""
    _, model = pair(arch, **overrides)
    tokens, mask = prompts()
    tokens = torch.cat([tokens, torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(5))], 1)
    mask = torch.cat([mask, torch.ones(2, 9, dtype=torch.long)], 1)
    n = tokens.shape[1]
    q4 = KVCache.for_model(model, 2, n, kv_cache_dtype="int4")
    ref = KVCache.for_model(model, 2, n)
    group = q4.layers[0].group
    chunks = [(0, 3), (3, 7)] + [(t, t + 1) for t in range(7, 12)] + [(12, 15), (15, n)]
    for lo, hi in chunks:
        got = model(tokens[:, lo:hi], attention_mask=mask[:, lo:hi], past_kv_cache=q4)
        want = model(tokens[:, lo:hi], attention_mask=mask[:, lo:hi], past_kv_cache=ref)
        real = mask[:, lo:hi].bool()
        torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0, msg=f"{arch}: tokens {lo}:{hi}")
        for s in ref.layers:  # idempotent on values already on the grid
            s.k.copy_(fake_int4(s.k, group))
            s.v.copy_(fake_int4(s.v, group))


@pytest.mark.parametrize("arch", archs())
def test_accuracy_vs_fp32_cache(arch):
    """Teacher-forced logits vs the fp32 cache (numbers in docs/generation.md): the prompt is exact, later
    steps differ by less than int4's bound and more than int8's, and greedy picks mostly agree."""
    _, model = pair(arch)
    tokens = torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(3))
    a = teacher_forced_logits(model, tokens, 6)
    b = teacher_forced_logits(model, tokens, 6, "int4")
    b8 = teacher_forced_logits(model, tokens, 6, "int8")
    torch.testing.assert_close(b[:, 0], a[:, 0], atol=0, rtol=0)  # the prompt attends at full precision
    worst, worst8 = (a - b).abs().max().item(), (a - b8).abs().max().item()
    assert worst8 < worst < 2.0  # logits here are up to ~4 in size; the tiny models' attention is sharp
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert agree >= 0.75


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "MistralForCausalLM", "GPT2LMHeadModel"])
def test_generate_picks_near_argmax_of_uncached_logits(arch):
    """Cached == uncached, up to int4: each token int4 greedy generation picks is, on the same sequence
    recomputed without a cache, the argmax or within the measured int4 error of it."""
    _, model = pair(arch)
    tokens, mask = prompts()
    out = model.generate(tokens, 12, attention_mask=mask, stop_at_eos=False, kv_cache_dtype="int4")
    full_mask = torch.cat([mask, torch.ones(2, 12, dtype=torch.long)], 1)
    logits = model(out, attention_mask=full_mask)[:, tokens.shape[1] - 1 : -1].float()
    picked = logits.gather(-1, out[:, tokens.shape[1] :, None]).squeeze(-1)
    gap = logits.max(-1).values - picked
    assert gap[:, 0].abs().max() == 0  # the first token comes from the prompt, at full precision
    assert gap.max() < 1.0, gap
    assert (gap == 0).float().mean() >= 0.75


# -- rollback, beams ----------------------------------------------------------------------------------
def test_reorder_gathers_packed_values_and_scales():
    _, model = pair("LlamaForCausalLM")
    tokens = torch.randint(3, 97, (3, 5), generator=torch.Generator().manual_seed(6))
    cache = KVCache.for_model(model, 3, 8, kv_cache_dtype="int4")
    model(tokens, past_kv_cache=cache)
    cache.reorder(torch.tensor([2, 2, 0]))
    nxt = model(torch.tensor([[7], [8], [9]]), past_kv_cache=cache)[:, -1]
    fresh = KVCache.for_model(model, 3, 8, kv_cache_dtype="int4")
    model(tokens[[2, 2, 0]], past_kv_cache=fresh)
    ref = model(torch.tensor([[7], [8], [9]]), past_kv_cache=fresh)[:, -1]
    torch.testing.assert_close(nxt, ref, atol=0, rtol=0)


# -- bad input ----------------------------------------------------------------------------------------
def test_head_dims_that_cannot_pack_raise():
    with pytest.raises(ValueError, match=r"d_head must be even; got d_head=7"):
        KVCache(tiny_cfg("gpt2", d_model=28, n_heads=4), 1, 8, kv_cache_dtype="int4")
    with pytest.raises(ValueError, match=r"group of 32 values .* multiple of 32; got d_head=80"):
        KVCache(tiny_cfg("gpt2", d_model=320, n_heads=4), 1, 8, kv_cache_dtype="int4")
    cfg80 = tiny_cfg("gpt2", d_model=320, n_heads=4)
    assert KVCache(cfg80, 1, 8, kv_cache_dtype="int4", int4_group=16).layers[0].group == 16
    with pytest.raises(ValueError, match="group size must be an even int >= 2, got 3"):
        KVCache(cfg80, 1, 8, kv_cache_dtype="int4", int4_group=3)
    assert KVCache(tiny_cfg("gpt2", d_model=28, n_heads=4), 1, 8, kv_cache_dtype="int8").nbytes > 0
    assert int4_group(64) == 32 and int4_group(16) == 16 and int4_group(96) == 32


def test_generate_rejects_an_unpackable_head_dim_before_any_forward():
    model = tiny_model("gpt2", d_model=28, n_heads=4)  # d_head 7
    calls = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: calls.append(1))]):
        with pytest.raises(ValueError, match="d_head=7"):
            model.generate(torch.tensor([[5, 6, 7]]), 3, stop_at_eos=False, kv_cache_dtype="int4")
    assert calls == []
