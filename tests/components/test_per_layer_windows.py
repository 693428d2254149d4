"""Per-layer sliding windows (``window_size=(w0, None, w2, ...)``): each layer attends within its own window,
the same numbers as the shared-window form where they coincide, on the fused and explicit paths, cached and
uncached, and in an int8 cache past every window."""

from __future__ import annotations

import pytest
import torch

from lens import HookedTransformer, TransformerConfig

BASE = dict(
    n_layers=3, d_model=32, n_heads=4, n_key_value_heads=2, d_vocab=50, n_ctx=64, positional="rotary",
    normalization="RMS", act_fn="silu", gated_mlp=True,
)  # fmt: skip
TOKENS = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(0))


def _model(**kw) -> HookedTransformer:
    return HookedTransformer(TransformerConfig(**{**BASE, **kw}), seed=0).eval()


def test_each_layer_attends_within_its_own_window():
    model = _model(window_size=(3, None, 7))
    _, cache = model.run_with_cache(TOKENS)
    q = torch.arange(20)[:, None]
    k = torch.arange(20)[None, :]
    for layer, window in enumerate((3, None, 7)):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        allowed = (k <= q) if window is None else (k <= q) & (q - k < window)
        assert (pattern[..., ~allowed] == 0).all()
        assert (pattern[..., allowed] > 0).all()


def test_per_layer_form_equals_the_shared_form():
    shared = _model(window_size=5, window_layers=(0, 2))
    per_layer = _model(window_size=(5, None, 5))
    with torch.no_grad():
        torch.testing.assert_close(per_layer(TOKENS), shared(TOKENS), atol=0, rtol=0)


def test_fused_and_explicit_paths_agree():
    model = _model(window_size=(2, 9, None))
    with torch.no_grad():
        fused = model(TOKENS)
    explicit = model.run_with_hooks(TOKENS, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda t, hook: t)])
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_cache_dtype", [None, "int8"])
def test_generate_cached_equals_uncached_past_every_window(kv_cache_dtype):
    model = _model(window_size=(3, None, 6))
    prompt = TOKENS[:, :4]
    kw = dict(max_new_tokens=12, do_sample=False, stop_at_eos=False)
    uncached = model.generate(prompt, use_past_kv_cache=False, **kw)
    cached = model.generate(prompt, kv_cache_dtype=kv_cache_dtype, **kw)
    if kv_cache_dtype is None:
        assert torch.equal(cached, uncached)
    else:  # int8 keys/values: the same continuation on this peaked-enough model, or near-equal logits
        with torch.no_grad():
            ref = model(uncached)[:, -1]
            got = model(cached)[:, -1]
        assert torch.equal(cached, uncached) or torch.allclose(got, ref, atol=0.1)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(window_size=(3, None)), "2 per-layer entries, but n_layers=3"),
        (dict(window_size=(3, None, 0)), r"window_size\[2\] must be positive"),
        (dict(window_size=(3, None, 4), window_layers=(0,)), "window_layers must be None"),
    ],
)
def test_bad_per_layer_windows_raise(kw, words):
    with pytest.raises(ValueError, match=words):
        TransformerConfig(**{**BASE, **kw})


def test_round_trips_through_a_dict():
    cfg = TransformerConfig(**BASE, window_size=(3, None, 6))
    again = TransformerConfig.from_dict(cfg.to_dict())
    assert again.window_size == (3, None, 6) and [again.layer_window(i) for i in range(3)] == [3, None, 6]
