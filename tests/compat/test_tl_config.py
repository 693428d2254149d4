"""``lens.HookedTransformerConfig``: TransformerLens's config constructor builds the same model in lens.

Oracles: exact math on the built model (attention scale, head count, biases; always run) and TransformerLens
on identical weights (optional; skipped without ``transformer_lens``): the same keyword arguments given to
TransformerLens's ``HookedTransformerConfig`` and to lens's build models with equal logits and caches.
"""

from __future__ import annotations

import math

import pytest
import torch

import lens
from lens.tl_config import ConfigUntranslatable, HookedTransformerConfig
from tests.tiny import model_for

BASE = dict(n_layers=2, d_model=32, d_head=8, n_ctx=16, d_vocab=50)
CONFIGS = {
    "gpt2": dict(BASE, act_fn="gelu_new", normalization_type="LN"),
    "llama": dict(
        BASE, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True,
        n_key_value_heads=2, d_mlp=48,
    ),
    "neox": dict(BASE, act_fn="gelu", positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True),
    "gemma2_like": dict(
        BASE, act_fn="gelu_new", normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True,
        n_key_value_heads=2, d_mlp=48, use_normalization_before_and_after=True, attn_scores_soft_cap=2.0,
        output_logits_soft_cap=3.0, use_local_attn=True, attn_types=["local", "global"], window_size=4,
    ),
    "qk_norm": dict(
        BASE, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True,
        n_key_value_heads=2, d_mlp=48, use_qk_norm=True,
    ),
    "attn_only_scaled": dict(BASE, attn_only=True, normalization_type=None, attn_scale=2.0),
    "unscaled_relu": dict(BASE, act_fn="relu", d_mlp=20, use_attn_scale=False, n_heads=4, seed=7),
}  # fmt: skip


random_model = model_for


def tokens(vocab=50, batch=2, pos=9):
    return torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(3))


# -- translation -------------------------------------------------------------------------------------------
def test_field_names_and_defaults_are_translated():
    cfg = HookedTransformerConfig(**CONFIGS["llama"])
    assert isinstance(cfg, lens.TransformerConfig) and isinstance(cfg, HookedTransformerConfig)
    assert (cfg.n_heads, cfg.n_key_value_heads, cfg.normalization, cfg.positional) == (4, 2, "RMS", "rotary")
    assert cfg.unembed_bias  # TransformerLens's unembed always has b_U
    assert not cfg.mlp_bias  # its gated MLP adds b_in after the product (zeros at init): lens has none
    plain = HookedTransformerConfig(**BASE, act_fn="relu")
    assert (plain.normalization, plain.positional, plain.d_mlp) == ("LN", "learned", 4 * 32)
    assert not isinstance(object(), HookedTransformerConfig)
    assert lens.HookedTransformerConfig is HookedTransformerConfig


@pytest.mark.parametrize(
    ("fields", "factor"),
    [({}, 1 / math.sqrt(8)), ({"attn_scale": 2.0}, 0.5), ({"use_attn_scale": False}, 1.0)],
)
def test_attention_scale_divides_the_scores_as_transformer_lens(fields, factor):
    model = random_model(HookedTransformerConfig(**BASE, act_fn="relu", **fields))
    _, cache = model.run_with_cache(tokens())
    q, k = cache["q", 0], cache["k", 0]  # [batch, pos, head, d_head]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * factor
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    torch.testing.assert_close(cache["attn_scores", 0][..., mask], scores[..., mask], atol=1e-5, rtol=1e-5)


def test_local_attention_layers_become_window_layers():
    cfg = HookedTransformerConfig(
        **BASE, act_fn="relu", use_local_attn=True, attn_types=["global", "local"], window_size=4
    )
    assert cfg.window_layers == (1,) and cfg.window_size == 4


def test_off_values_and_init_fields_are_accepted():
    capped = HookedTransformerConfig(**BASE, act_fn="relu", attn_scores_soft_cap=-1.0, output_logits_soft_cap=30.0)
    assert capped.attn_scores_soft_cap is None and capped.output_logits_soft_cap == 30.0
    cfg = HookedTransformerConfig(
        **BASE, act_fn="relu", use_qk_norm=False, n_devices=1, final_rms=False, seed=3, init_mode="gpt2",
        original_architecture=None, d_vocab_out=-1,
    )  # fmt: skip
    assert cfg.d_vocab_out == 50


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"final_rms": True}, "final_rms=True has no lens equivalent"),
        ({"n_devices": 2}, "n_devices=2"),
        ({"normalization_type": "LNPre"}, "normalization_type='LNPre'"),
        ({"positional_embedding_type": "alibi"}, "positional_embedding_type='alibi'"),
        ({"load_in_4bit": True}, "load_in_4bit=True"),
        ({"bogus_field": 1}, "unknown HookedTransformerConfig field bogus_field=1"),
        ({"d_vocab": -1}, "d_vocab=-1"),
        ({"act_fn": None}, "act_fn must be given"),
        ({"d_head": 5}, "d_model=32 is not a multiple of d_head=5"),
    ],
)
def test_untranslatable_fields_raise_naming_them(fields, words):
    kw = dict(BASE, act_fn="relu")
    kw.update(fields)
    with pytest.raises(ConfigUntranslatable, match=words.replace("(", r"\(").replace(".", r"\.")):
        HookedTransformerConfig(**kw)
    assert issubclass(ConfigUntranslatable, ValueError)


def test_required_fields_and_keyword_only():
    with pytest.raises(ConfigUntranslatable, match="needs d_head="):
        HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_vocab=10, act_fn="relu")
    with pytest.raises(TypeError, match="keyword arguments only"):
        HookedTransformerConfig(BASE)


def test_from_dict_and_unwrap():
    kw = dict(BASE, act_fn="relu")
    cfg = HookedTransformerConfig.from_dict(kw)
    assert HookedTransformerConfig.unwrap(kw) == cfg
    assert HookedTransformerConfig.unwrap(cfg) is cfg
    with pytest.raises(TypeError, match="dict or a TransformerConfig"):
        HookedTransformerConfig.unwrap(3)


# -- TransformerLens as the oracle --------------------------------------------------------------------------
def copy_into_tl(model, tl_model) -> None:
    """Load lens's weights into a TransformerLens model through the TransformerLens-shaped views."""
    state = {}
    for key in tl_model.state_dict():
        *path, name = key.split(".")
        if name in ("mask", "IGNORE") or name.startswith("rotary_"):
            continue
        owner = model
        for part in path:
            owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
        state[key] = getattr(owner, name.lstrip("_")).detach().clone()
    missing, unexpected = tl_model.load_state_dict(state, strict=False)
    buffers = ("mask", "IGNORE", "rotary_sin", "rotary_cos")  # TransformerLens's own tables
    assert not unexpected and not [k for k in missing if k.split(".")[-1] not in buffers], missing


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_fields_build_the_same_model_as_transformer_lens(name):
    tl = pytest.importorskip("transformer_lens", reason="TransformerLens is the optional oracle")
    fields = CONFIGS[name]
    model = random_model(HookedTransformerConfig(**fields), seed=2)
    tl_model = tl.HookedTransformer(tl.HookedTransformerConfig(**fields, device="cpu"), move_to_device=False).eval()
    copy_into_tl(model, tl_model)
    toks = tokens()
    with torch.no_grad():
        expected, tl_cache = tl_model.run_with_cache(toks)
        got, cache = model.run_with_cache(toks)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert set(cache.keys()) == set(tl_cache.keys())
    rms = fields.get("normalization_type") == "RMS"  # lens's RMS hook_normalized includes the weight
    for key in tl_cache.keys():
        got_act = cache[key]
        if "_norm." in key:  # TransformerLens runs q_norm / k_norm on [batch * pos * head, d_head]; lens keeps dims
            assert got_act.shape[:3] == (*toks.shape, got_act.shape[2]) and got_act.numel() == tl_cache[key].numel()
            got_act = got_act.reshape(tl_cache[key].shape)
        assert got_act.shape == tl_cache[key].shape, key
        if not (rms and key.endswith("hook_normalized")):  # TL: before the weight (see migration doc)
            torch.testing.assert_close(got_act, tl_cache[key], atol=1e-5, rtol=1e-5, msg=key)
