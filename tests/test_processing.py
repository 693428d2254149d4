"""Weight processing preserves next-token log-probs on every family where it applies."""

from __future__ import annotations

import pytest
import torch

from lens import HookedTransformer
from lens.processing import FLAG_NAMES as ALL_FLAGS
from lens.processing import ProcessingFlags, process_weights
from tests.tiny import hf_tokens as tokens
from tests.tiny import lens_config, saved, variants

pytest.importorskip("transformers")

FAMILIES = variants()  # the families' declared tiny models
LN_FAMILIES = [f for f in FAMILIES if lens_config(f).normalization == "LN"]  # every residual reader is a LayerNorm
RMS_FAMILIES = [f for f in FAMILIES if f not in LN_FAMILIES]


def _applies(cfg, flag: str) -> bool:
    """Whether the flag can keep this architecture's log-probs (else it is refused; tested below)."""
    try:
        ProcessingFlags(**{flag: True}).check(cfg)
    except ValueError:
        return False
    return True


def _cases():
    for family in FAMILIES:
        cfg = lens_config(family)
        applicable = [f for f in ALL_FLAGS if _applies(cfg, f)]
        # the refusals are the documented ones: centring without LayerNorm, refactoring rotary / grouped /
        # q-k-normed attention, centring the unembedding under a logit soft cap
        refused = set(ALL_FLAGS) - set(applicable)
        assert "center_writing_weights" in refused or family in LN_FAMILIES, family
        assert "fold_ln" in applicable and "fold_value_biases" in applicable, family
        for flag in applicable:
            yield pytest.param(family, (flag,), id=f"{family}-{flag}")
        yield pytest.param(family, tuple(applicable), id=f"{family}-all")


def _load(family: str, **flags) -> HookedTransformer:
    return HookedTransformer.from_pretrained(saved(family)[0], **flags)


def _log_probs(model) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens()).log_softmax(-1)


@pytest.mark.parametrize("family, flags", list(_cases()))
def test_processing_preserves_log_probs(family, flags):
    plain = _load(family)
    expected = _log_probs(plain)
    processed = _load(family, **dict.fromkeys(flags, True))
    torch.testing.assert_close(_log_probs(processed), expected, atol=1e-4, rtol=0)
    assert processed.cfg.extra["weight_processing"] == list(flags)
    # the method on an already-loaded model does the same
    torch.testing.assert_close(
        _log_probs(plain.process_weights(**dict.fromkeys(flags, True))), expected, atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_fold_ln_leaves_unit_norms_and_unties(family):
    plain, model = _load(family), _load(family, fold_ln=True)
    norms = [model.ln_final] + [b.ln1 for b in model.blocks] + [b.ln2 for b in model.blocks]
    for norm in norms:
        if norm is None:  # post-norm-only blocks (use_normalization_after_only) have no ln1 / ln2
            continue
        assert torch.all(norm.w == 1)
        assert getattr(norm, "b", None) is None or torch.all(norm.b == 0)
    assert set(model.hook_dict) == set(plain.hook_dict)  # every norm and its hooks stay
    assert not model.cfg.tie_word_embeddings
    assert model.unembed.weight.data_ptr() != model.embed.weight.data_ptr()
    torch.testing.assert_close(model.W_E, plain.W_E, atol=0, rtol=0)  # folding never touches the embedding
    if plain.cfg.normalization == "LN" and plain.cfg.norm_bias:  # the LN bias needed a q/k/v bias (neox-seq: none)
        assert model.cfg.qkv_bias and model.blocks[0].attn.qkv_bias is not None


def test_centering_and_value_bias_folding_results():
    model = _load("gpt2", center_writing_weights=True, center_unembed=True, fold_value_biases=True)
    zero = dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(model.W_E.mean(-1), torch.zeros(model.cfg.d_vocab), **zero)
    torch.testing.assert_close(model.W_pos.mean(-1), torch.zeros(model.W_pos.shape[0]), **zero)
    torch.testing.assert_close(model.blocks[1].attn.W_O.mean(-1), torch.zeros(4, 8), **zero)
    torch.testing.assert_close(model.blocks[1].mlp.W_out.mean(-1), torch.zeros(model.cfg.d_mlp), **zero)
    torch.testing.assert_close(model.W_U.mean(-1), torch.zeros(model.cfg.d_model), **zero)
    assert torch.all(model.blocks[0].attn.b_V == 0)


def test_fold_value_biases_creates_output_bias_under_gqa():
    model = _load("qwen2", fold_value_biases=True)  # q/k/v biases, no o_proj bias, 4 heads over 2 kv heads
    assert model.cfg.attn_out_bias and torch.all(model.blocks[0].attn.b_V == 0)
    assert model.blocks[0].attn.o_bias.abs().sum() > 0


@pytest.mark.parametrize("family", RMS_FAMILIES)
def test_centering_writing_weights_needs_layernorm(family):
    with pytest.raises(ValueError, match="center_writing_weights needs LayerNorm.*'RMS'"):
        _load(family, center_writing_weights=True)
    with pytest.raises(ValueError, match="center_writing_weights needs LayerNorm"):
        _load(family).process_weights(center_writing_weights=True)


def test_flags_must_be_bools():
    with pytest.raises(TypeError, match="fold_ln must be a bool"):
        _load("gpt2", fold_ln="yes")


def test_processing_flags_are_one_validated_value():
    model = _load("gpt2")
    with pytest.raises(TypeError, match="center_unembed must be a bool, got int"):
        ProcessingFlags(center_unembed=1)
    with pytest.raises(TypeError, match="fold_value_biases must be a bool"):
        model.process_weights(fold_value_biases=None)
    with pytest.raises(TypeError, match="unexpected keyword argument 'fold_layernorm'.*fold_ln"):
        process_weights(model, fold_layernorm=True)
    with pytest.raises(TypeError, match="not both"):
        process_weights(model, ProcessingFlags(fold_ln=True), center_unembed=True)
    assert ProcessingFlags(fold_value_biases=True, fold_ln=True).requested == ("fold_ln", "fold_value_biases")
    expected = _log_probs(model)
    process_weights(model, ProcessingFlags(fold_ln=True, center_unembed=True))
    torch.testing.assert_close(_log_probs(model), expected, atol=1e-4, rtol=0)
    assert model.cfg.extra["weight_processing"] == ["fold_ln", "center_unembed"]


def test_center_unembed_is_refused_under_a_logit_soft_cap():
    cfg = lens_config(FAMILIES[0]).replace(output_logits_soft_cap=30.0)
    with pytest.raises(ValueError, match="output_logits_soft_cap=30.0"):
        ProcessingFlags(center_unembed=True).check(cfg)
    ProcessingFlags(center_unembed=True).check(cfg.replace(output_logits_soft_cap=None))  # fine without the cap
