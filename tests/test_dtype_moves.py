"""Dtype and device moves after loading: ``.half()``, ``.bfloat16()``, ``.to(dtype)``, ``.float()``, ``.to(device)``.

Every family's tiny variant (``lens.families.tiny_configs()``) is loaded in float32 and converted; the
converted model must run, keep ``cfg`` in step with its parameters, and compute as the model loaded
directly in that dtype (``from_pretrained(dir, dtype=...)``). The parameters are bit-identical except the
norm weights a family stores as offsets from 1 (Gemma's ``1 + w``, the ``plus_one`` spec): the direct load
adds 1 in the target dtype, the conversion rounds the float32 sum once, so those differ by at most one
rounding step and the logits by bf16 noise (``BF16_ATOL``, the parity tests' tolerance). Rotary inverse
frequencies stay float32 through every cast.
"""

from __future__ import annotations

import pytest
import torch

from lens import HookedTransformer, TransformerConfig
from lens.families import ADAPTERS
from lens.generation import KVCache
from tests.families.test_parity import BF16_ATOL
from tests.tiny import FAMILIES, hf_tokens, saved

pytest.importorskip("transformers")

# (name, conversion, target dtype)
MOVES = [
    ("half", lambda m: m.half(), torch.float16),
    ("bfloat16", lambda m: m.bfloat16(), torch.bfloat16),
    ("to_bf16", lambda m: m.to(torch.bfloat16), torch.bfloat16),
    ("to_cpu_fp16", lambda m: m.to("cpu", torch.float16), torch.float16),
    ("to_dtype_kw", lambda m: m.to(dtype=torch.bfloat16), torch.bfloat16),
]


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def variant(request) -> str:
    return request.param


def _load(name: str, dtype: torch.dtype = torch.float32) -> HookedTransformer:
    directory, _ = saved(name)
    return HookedTransformer.from_pretrained(directory, dtype=dtype).eval()


def _offset_norms(name: str, model: HookedTransformer) -> set[str]:
    """Parameters the family stores as offsets from 1 (loaded as ``1 + w``)."""
    adapter = next(a for a in ADAPTERS if name in a.tiny)
    return {p for p, spec in adapter.weights(model.cfg).items() if spec.describe == "add 1"}


def _logits(model: HookedTransformer, toks: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(toks).float()


def _check_in_step(model: HookedTransformer, dtype: torch.dtype) -> None:
    assert model.cfg.dtype == dtype
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert all(m.cfg is model.cfg for m in model.modules() if hasattr(m, "cfg"))  # one config, in sync
    for name in ("rotary", "rotary_local"):
        rot = getattr(model, name, None)
        if rot is not None:
            assert all(b.dtype == torch.float32 for b in rot.buffers())
    if model.cfg.tie_word_embeddings:
        assert model.unembed.weight is model.embed.weight


def _same_weights(
    name: str, got: HookedTransformer, ref: HookedTransformer, rounding: torch.dtype | None = None
) -> bool:
    """Bitwise equal, or (offset norms only) within one rounding step of ``rounding`` (default: ``ref``'s dtype);
    True if bitwise."""
    offset = _offset_norms(name, got)
    exact = True
    ref_params = dict(ref.named_parameters())
    for p, value in got.named_parameters():
        expected = ref_params[p]
        if torch.equal(value, expected):
            continue
        assert p in offset, f"{p} differs from the directly loaded model"
        ulp = torch.finfo(rounding or expected.dtype).eps * expected.float().abs().clamp_min(1.0)
        assert bool(((value.float() - expected.float()).abs() <= ulp).all()), p
        exact = False
    return exact


def _assert_logits(got: torch.Tensor, expected: torch.Tensor, exact: bool) -> None:
    torch.testing.assert_close(got, expected, atol=0 if exact else BF16_ATOL, rtol=0)


@pytest.mark.parametrize("move", MOVES, ids=[m[0] for m in MOVES])
def test_move_computes_as_a_direct_load(variant, move):
    _, convert, dtype = move
    model = _load(variant)
    fp32_inv = [b.clone() for b in model.buffers()]
    assert convert(model) is model
    _check_in_step(model, dtype)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), fp32_inv, strict=True))  # float32, unrounded
    direct = _load(variant, dtype)
    exact = _same_weights(variant, model, direct)
    toks = hf_tokens()
    logits = _logits(model, toks)
    assert torch.isfinite(logits).all()
    _assert_logits(logits, _logits(direct, toks), exact)


def test_float_after_bfloat16_is_the_bf16_model_upcast(variant):
    model = _load(variant).bfloat16().float()
    _check_in_step(model, torch.float32)
    direct = _load(variant, torch.bfloat16).float()
    _check_in_step(direct, torch.float32)
    exact = _same_weights(variant, model, direct, rounding=torch.bfloat16)
    toks = hf_tokens()
    _assert_logits(_logits(model, toks), _logits(direct, toks), exact)
    # the rotary tables came back exactly (never rounded): equal to a fresh float32 load's
    fresh = _load(variant)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), fresh.buffers(), strict=True))


def test_run_with_cache_after_a_move(variant):
    model = _load(variant).to(torch.bfloat16)
    toks = hf_tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks)
    assert logits.dtype == torch.bfloat16
    assert cache["resid_post", model.cfg.n_layers - 1].dtype == torch.bfloat16
    assert cache["pattern", 0].dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    # watching the pattern takes the explicit attention path (bf16 noise against the fused forward, enough to
    # flip a MoE routing choice): compare with the directly loaded model on the same path
    direct = _load(variant, torch.bfloat16)
    with torch.no_grad():
        direct_logits, direct_cache = direct.run_with_cache(toks)
    exact = _same_weights(variant, model, direct)
    _assert_logits(logits.float(), direct_logits.float(), exact)
    _assert_logits(cache["pattern", 0].float(), direct_cache["pattern", 0].float(), exact)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_generate_after_a_move(name, dtype):
    model = _load(name).to(dtype)
    assert KVCache.for_model(model, batch=1, max_len=4).dtype == dtype
    prompt = hf_tokens(batch=2, pos=6)
    kw = dict(max_new_tokens=8, stop_at_eos=False)
    cached = model.generate(prompt, use_past_kv_cache=True, **kw)
    uncached = model.generate(prompt, use_past_kv_cache=False, **kw)
    assert cached.shape == (2, 14)
    torch.testing.assert_close(cached, uncached, atol=0, rtol=0)
    direct = _load(name, dtype)
    if _same_weights(name, model, direct):
        torch.testing.assert_close(cached, direct.generate(prompt, **kw), atol=0, rtol=0)


def test_device_move_updates_cfg_device():
    model = _load("llama3")
    assert model.to("cpu") is model
    assert model.cfg.device == torch.device("cpu")
    assert model.cfg.dtype == torch.float32
    model.to(torch.device("cpu"), dtype=torch.bfloat16)
    assert (model.cfg.device, model.cfg.dtype) == (torch.device("cpu"), torch.bfloat16)
    assert model.cpu().float() is model
    _check_in_step(model, torch.float32)
    assert model.cfg.device == torch.device("cpu")


def test_a_shared_config_is_not_changed():
    """Two models built from one config object: converting one leaves the other (and the object) alone."""
    cfg = TransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_vocab=97, n_ctx=32, positional="rotary", normalization="RMS"
    )
    a, b = HookedTransformer(cfg), HookedTransformer(cfg)
    assert a.cfg is cfg and b.cfg is cfg
    a.half()
    assert a.cfg.dtype == torch.float16 and a.cfg is not cfg
    assert cfg.dtype == torch.float32 and b.cfg is cfg
    assert all(m.cfg is b.cfg for m in b.modules() if hasattr(m, "cfg"))
    toks = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert a(toks).dtype == torch.float16
        assert b(toks).dtype == torch.float32
    # a conversion that changes nothing keeps the very same config object
    before = b.cfg
    b.to("cpu")
    after = b.cfg
    b.float()
    assert b.cfg is after and after.device == torch.device("cpu") and before.device is None
