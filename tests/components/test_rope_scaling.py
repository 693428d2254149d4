"""Rotary scalings ``yarn``, ``dynamic`` (dynamic NTK) and ``longrope`` (Phi-3's ``su``) against transformers.

Oracles: ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` (inverse frequencies and attention factor),
transformers' rotary modules (cos/sin for the positions of one forward), and tiny random-weight models
(logits, greedy generate) whose ``original_max_position_embeddings`` / ``max_position_embeddings`` is 8, so a
12-16 token input runs past it and switches to the long factors / the grown dynamic base.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from lens import HookedTransformer, TransformerConfig
from lens.components.rotary import Rotary, cache_refresh_length, rotary_inv_freq
from lens.families import config_from_hf
from lens.families.base import TINY_SHAPE
from tests.generation.test_generate_hf import hf_generate, padded_batch
from tests.tiny import hf_tokens, pair, saved, spec

transformers = pytest.importorskip("transformers")
rope_utils = pytest.importorskip("transformers.modeling_rope_utils")

SHORT = 8  # original_max_position_embeddings (longrope, yarn) / max_position_embeddings (dynamic)
LONGROPE = dict(rope_type="longrope", rope_theta=10000.0, short_factor=[1.0, 1.25], long_factor=[1.5, 4.0])

YARN_CASES = {
    "defaults": dict(factor=4.0),
    "betas": dict(factor=4.0, beta_fast=16, beta_slow=2),
    "attention_factor": dict(factor=4.0, attention_factor=0.8),
    "mscale": dict(factor=4.0, mscale=0.707, mscale_all_dim=1.0),
    "no_truncate": dict(factor=4.0, truncate=False, beta_fast=20),
    "partial": dict(factor=2.0, partial_rotary_factor=0.5),
}


def llama_config(rope: dict, max_pos: int = 64, **kw):
    params = dict(rope_theta=10000.0, **rope)
    return transformers.LlamaConfig(**TINY_SHAPE, max_position_embeddings=max_pos, rope_parameters=params, **kw)


def phi3_config(rope: dict | None = None, **kw):
    kw = dict(dict(max_position_embeddings=64, original_max_position_embeddings=SHORT, partial_rotary_factor=0.5), **kw)
    return transformers.Phi3Config(**TINY_SHAPE, rope_parameters=dict(rope or LONGROPE), **kw)


def lens_cfg(hf_config) -> TransformerConfig:
    return config_from_hf(hf_config)[1]


def hf_init(hf_config, seq_len=None):
    kind = hf_config.rope_parameters["rope_type"]
    return rope_utils.ROPE_INIT_FUNCTIONS[kind](hf_config, "cpu", seq_len=seq_len)


def assert_same_freqs(cfg, hf_config, seq_len=None):
    inv, scale = rotary_inv_freq(cfg, seq_len)
    ref, ref_scale = hf_init(hf_config, seq_len)
    torch.testing.assert_close(inv, ref, atol=0, rtol=1e-6)
    assert scale == pytest.approx(ref_scale, rel=1e-12, abs=0)


# -- (1) inverse frequencies and attention scaling -------------------------------------------------------
@pytest.mark.parametrize("case", list(YARN_CASES))
def test_yarn_matches_transformers(case):
    hf_config = llama_config(dict(rope_type="yarn", original_max_position_embeddings=16, **YARN_CASES[case]))
    cfg = lens_cfg(hf_config)
    assert_same_freqs(cfg, hf_config)
    if case == "attention_factor":
        assert rotary_inv_freq(cfg)[1] == 0.8
    else:
        assert rotary_inv_freq(cfg)[1] != 1.0  # an mscale on cos / sin


def test_yarn_original_context_falls_back_to_max_position_embeddings():
    hf_config = llama_config(dict(rope_type="yarn", factor=4.0), max_pos=32)
    cfg = lens_cfg(hf_config)
    assert cfg.rope_scaling["original_max_position_embeddings"] == 32
    assert_same_freqs(cfg, hf_config)


@pytest.mark.parametrize("seq_len", [None, 4, SHORT, SHORT + 1, 20, 100])
def test_dynamic_matches_transformers_at_short_and_long_lengths(seq_len):
    hf_config = llama_config(dict(rope_type="dynamic", factor=2.0), max_pos=SHORT)
    cfg = lens_cfg(hf_config)
    assert_same_freqs(cfg, hf_config, seq_len)
    base = rotary_inv_freq(cfg)[0]
    grown = seq_len is not None and seq_len > SHORT
    assert torch.equal(rotary_inv_freq(cfg, seq_len)[0], base) != grown


@pytest.mark.parametrize("seq_len", [None, 5, SHORT, SHORT + 1, 16])
@pytest.mark.parametrize(
    "extra", [{}, {"factor": 4.0}, {"attention_factor": 1.1}], ids=["derived", "factor", "attention_factor"]
)
def test_longrope_matches_transformers_short_and_long(seq_len, extra):
    hf_config = phi3_config(dict(LONGROPE, **extra))
    cfg = lens_cfg(hf_config)
    assert cfg.rotary_dim == 4 and cfg.rope_scaling["original_max_position_embeddings"] == SHORT
    assert_same_freqs(cfg, hf_config, seq_len)
    if not extra:  # factor = 64 / 8 from the two context lengths
        assert rotary_inv_freq(cfg)[1] == pytest.approx(math.sqrt(1 + math.log(8) / math.log(SHORT)))


def _hf_rotary(hf_config):
    module = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding
    if isinstance(hf_config, transformers.Phi3Config):
        module = transformers.models.phi3.modeling_phi3.Phi3RotaryEmbedding
    return module(hf_config)


@pytest.mark.parametrize("name", ["yarn", "dynamic", "longrope"], ids=["yarn", "dynamic", "longrope"])
def test_cos_sin_per_forward_match_transformers_rotary_module(name):
    """Lengths in increasing order (transformers' dynamic module keeps the longest length it has seen)."""
    hf_config = {
        "yarn": lambda: llama_config(dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=SHORT)),
        "dynamic": lambda: llama_config(dict(rope_type="dynamic", factor=3.0), max_pos=SHORT),
        "longrope": phi3_config,
    }[name]()
    ours, theirs = Rotary(lens_cfg(hf_config)), _hf_rotary(hf_config)
    x = torch.zeros(1, dtype=torch.float32)
    for n in (3, SHORT, SHORT + 1, 13, 16):
        positions = torch.arange(n)[None].expand(2, n)
        got = ours.cos_sin(positions, torch.float32)
        ref = theirs(x, positions)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # one decode step: the new position alone carries the whole sequence's length
    step = ours.cos_sin(torch.tensor([[15]]), torch.float32)
    torch.testing.assert_close(step[0], ours.cos_sin(torch.arange(16)[None], torch.float32)[0][:, -1:])


def test_dynamic_is_stateless_where_transformers_remembers_the_longest_length():
    """The documented difference: after a 16-token forward transformers rotates a 12-token one with the
    16-token base; lens rotates it as a 12-token forward (what a fresh transformers module gives)."""
    hf_config = llama_config(dict(rope_type="dynamic", factor=3.0), max_pos=SHORT)
    ours, theirs = Rotary(lens_cfg(hf_config)), _hf_rotary(hf_config)
    x, p12 = torch.zeros(1), torch.arange(12)[None]
    theirs(x, torch.arange(16)[None])
    stale = theirs(x, p12)[0]
    fresh = _hf_rotary(hf_config)(x, p12)[0]
    torch.testing.assert_close(ours.cos_sin(p12, torch.float32)[0], fresh, atol=1e-6, rtol=0)
    assert not torch.allclose(stale, fresh, atol=1e-4)


# -- config: keys each type needs, Phi-3's names and context --------------------------------------------
def _rotary_cfg(**scaling) -> TransformerConfig:
    return TransformerConfig(
        n_layers=1, d_model=32, n_heads=4, d_vocab=10, n_ctx=16, positional="rotary", rope_scaling=scaling
    )


@pytest.mark.parametrize(
    "scaling,key",
    [
        (dict(rope_type="yarn", original_max_position_embeddings=8), "factor"),
        (dict(rope_type="yarn", factor=2.0), "original_max_position_embeddings"),
        (dict(rope_type="dynamic", max_position_embeddings=8), "factor"),
        (dict(rope_type="dynamic", factor=2.0), "max_position_embeddings"),
        (
            dict(rope_type="longrope", long_factor=[1.0] * 4, original_max_position_embeddings=8, factor=2.0),
            "short_factor",
        ),
        (dict(LONGROPE, original_max_position_embeddings=8, factor=2.0), "short_factor"),  # 2 entries, rotary_dim 8
        (dict(rope_type="longrope", short_factor=[1.0] * 4, long_factor=[1.0] * 4, factor=2.0), "original_max"),
        (dict(rope_type="yarn", factor=-1.0, original_max_position_embeddings=8), "factor"),
    ],
)
def test_missing_or_bad_keys_raise_naming_the_key(scaling, key):
    with pytest.raises(ValueError, match=key):
        _rotary_cfg(**scaling)


def test_unknown_rope_type_lists_the_supported_ones():
    with pytest.raises(ValueError, match=r"'made_up'.*yarn.*dynamic.*longrope"):
        _rotary_cfg(rope_type="made_up", factor=2.0)


@pytest.mark.parametrize("legacy", ["su", "yarn"])
def test_phi3_legacy_names_load_as_longrope(legacy):
    raw = dict(TINY_SHAPE, architectures=["Phi3ForCausalLM"], model_type="phi3", max_position_embeddings=64,
               original_max_position_embeddings=SHORT, partial_rotary_factor=0.5,
               rope_scaling={"type": legacy, "short_factor": [1.0, 1.25], "long_factor": [1.5, 4.0]})  # fmt: skip
    cfg = lens_cfg(raw)
    assert cfg.rope_scaling["rope_type"] == "longrope" and "type" not in cfg.rope_scaling
    assert_same_freqs(cfg, transformers.Phi3Config(**{k: v for k, v in raw.items() if k != "architectures"}), 16)


def test_phi3_reads_the_top_level_original_context_like_transformers():
    """transformers' Phi3Config puts its own original_max_position_embeddings (default 4096) over the rope
    dict's; lens reads the same one."""
    rope = dict(LONGROPE, short_factor=[1.0] * 4, long_factor=[2.0] * 4, original_max_position_embeddings=8)
    hf_config = transformers.Phi3Config(**TINY_SHAPE, max_position_embeddings=8192, rope_parameters=rope)
    raw = {k: v for k, v in hf_config.to_dict().items() if k != "original_max_position_embeddings"}
    raw["rope_parameters"]["original_max_position_embeddings"] = 8
    for source in (hf_config, raw):
        assert lens_cfg(source).rope_scaling["original_max_position_embeddings"] == 4096
    assert_same_freqs(lens_cfg(raw), hf_config, 5000)


def test_phi3_refuses_other_rope_types_as_transformers_does():
    raw = dict(TINY_SHAPE, architectures=["Phi3ForCausalLM"], rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match="'dynamic'.*longrope"):
        lens_cfg(raw)


def test_dynamic_accepts_factor_times_the_pretraining_context():
    cfg = lens_cfg(llama_config(dict(rope_type="dynamic", factor=2.0), max_pos=SHORT))
    assert cfg.n_ctx_trained == cfg.n_ctx == 2 * SHORT
    assert cache_refresh_length(cfg) is None
    assert cache_refresh_length(lens_cfg(phi3_config())) == SHORT


# -- (2) full-model parity ----------------------------------------------------------------------------------
MODELS = {  # name: (HF class, config kwargs)
    "llama_yarn": (
        "LlamaForCausalLM",
        dict(TINY_SHAPE, num_key_value_heads=2, max_position_embeddings=64,
             rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, beta_fast=8, beta_slow=2,
                                  original_max_position_embeddings=SHORT)),
    ),
    "llama_dynamic": (
        "LlamaForCausalLM",
        dict(TINY_SHAPE, num_key_value_heads=2, max_position_embeddings=SHORT,
             rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)),
    ),
    "qwen2_dynamic": (
        "Qwen2ForCausalLM",
        dict(TINY_SHAPE, num_key_value_heads=2, max_position_embeddings=SHORT,
             rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=3.0)),
    ),
    "neox_dynamic_partial": (  # LayerNorm, parallel blocks, dynamic NTK on half of each head (partial rotary)
        "GPTNeoXForCausalLM",
        dict(spec("neox")[1], max_position_embeddings=SHORT,
             rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0, partial_rotary_factor=0.5)),
    ),
    "phi3_longrope_full": (
        "Phi3ForCausalLM",
        dict(TINY_SHAPE, max_position_embeddings=64, original_max_position_embeddings=SHORT,
             rope_parameters=dict(LONGROPE, short_factor=[1.0, 1.1, 1.2, 1.5], long_factor=[1.0, 2.0, 4.0, 8.0]),
             pad_token_id=0, bos_token_id=1, eos_token_id=2),
    ),
}  # fmt: skip


def _logits(model, toks):
    with torch.no_grad():
        out = model(toks)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_hf_short_and_past_the_original_context(name):
    directory, hf = saved(name, MODELS[name])
    loaded = HookedTransformer.from_pretrained(directory)
    converted = HookedTransformer.from_pretrained(hf)
    assert loaded.cfg.rope_scaling == converted.cfg.rope_scaling
    for n in (5, SHORT, 12, 16):  # increasing: transformers' dynamic module remembers the longest length
        toks = hf_tokens(pos=n)
        ref = _logits(hf, toks)
        for model in (loaded, converted):
            torch.testing.assert_close(_logits(model, toks), ref, atol=1e-4, rtol=0)


def test_phi3_su_checkpoint_loads_and_matches_hf(tmp_path):
    """A transformers-4 style config.json (``rope_scaling`` with ``type: su``, the Phi-3-128k checkpoints)."""
    directory = shutil.copytree(saved("phi3_longrope")[0], tmp_path / "su")
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    params = raw.pop("rope_parameters")
    raw["rope_scaling"] = {"type": "su", "short_factor": params["short_factor"], "long_factor": params["long_factor"]}
    raw["rope_theta"] = params["rope_theta"]
    path.write_text(json.dumps(raw))
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    model = HookedTransformer.from_pretrained(directory)
    for n in (6, 16):
        toks = hf_tokens(pos=n)
        torch.testing.assert_close(_logits(model, toks), _logits(hf, toks), atol=1e-4, rtol=0)


# -- (3) greedy generate crossing the switch length ------------------------------------------------------
GEN = {  # (arch, overrides of the family's tiny generation model)
    "llama_dynamic": ("LlamaForCausalLM", dict(max_position_embeddings=SHORT, rope_parameters=dict(
        rope_type="dynamic", rope_theta=10000.0, factor=2.0))),
    "phi3_longrope": ("Phi3ForCausalLM", dict(original_max_position_embeddings=SHORT, partial_rotary_factor=0.5,
                                              rope_parameters=LONGROPE)),
    "phi3_longrope_no_window": ("Phi3ForCausalLM", dict(window=None, original_max_position_embeddings=SHORT,
                                                        partial_rotary_factor=0.5, rope_parameters=LONGROPE)),
}  # fmt: skip
N_NEW = 10  # prompts of 6 tokens (3 and 5 in the padded rows) grow to 16, past the switch at 8


@pytest.mark.parametrize("name", list(GEN))
@pytest.mark.parametrize("cache", [True, False], ids=["kv_cache", "no_cache"])
def test_greedy_generate_matches_hf_across_the_switch(name, cache):
    arch, overrides = GEN[name]
    hf, model = pair(arch, **overrides)
    assert model.cfg.rope_scaling["rope_type"] in ("dynamic", "longrope")
    tokens, mask = padded_batch()
    ours = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, use_past_kv_cache=cache)
    ref = hf_generate(hf, tokens, mask, max_new_tokens=N_NEW, eos_token_id=None, pad_token_id=0, use_cache=cache)
    assert torch.equal(ours, ref)
    alone = model.generate(tokens[:1], N_NEW, stop_at_eos=False, use_past_kv_cache=cache)
    ref = hf_generate(hf, tokens[:1], max_new_tokens=N_NEW, eos_token_id=None, pad_token_id=0, use_cache=cache)
    assert torch.equal(alone, ref)


@pytest.mark.parametrize("name", ["phi3_longrope", "llama_dynamic"])
def test_beam_search_matches_hf_across_the_switch(name):
    arch, overrides = GEN[name]
    hf, model = pair(arch, **overrides)
    tokens, mask = padded_batch()
    ours = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, num_beams=3)
    ref = hf_generate(hf, tokens, mask, max_new_tokens=N_NEW, eos_token_id=None, pad_token_id=0, num_beams=3)
    assert torch.equal(ours, ref)


def test_longrope_cached_generation_equals_uncached_and_records_every_position():
    """Past the switch every key rotates with the long factors: the cached run refills its cache there, so its
    step logits equal the uncached run's (which recomputes everything every step)."""
    _, model = pair("Phi3ForCausalLM", **GEN["phi3_longrope"][1])
    tokens, mask = padded_batch()
    seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    for cache in (True, False):

        def grab(x, hook, cache=cache):
            seen[cache].append(model.unembed(x[:, -1]).float())

        with model.hooks(fwd_hooks=[("ln_final.hook_normalized", grab)]):
            model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, use_past_kv_cache=cache)
    for a, b in zip(seen[True], seen[False], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    names = ("blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern")
    out = model.generate(
        tokens, N_NEW, attention_mask=mask, stop_at_eos=False, return_cache=True, names_filter=lambda n: n in names
    )
    assert out.cache["blocks.0.hook_resid_post"].shape[:2] == (3, 6 + N_NEW)
    assert out.cache["blocks.1.attn.hook_pattern"].shape[-2:] == (6 + N_NEW, 6 + N_NEW)
