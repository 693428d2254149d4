"""Weight processing preserves next-token log-probs on every family where it applies."""

from __future__ import annotations

import pytest
import torch

from lens import HookedTransformer
from tests.adapters.helpers import saved, tokens
from tests.adapters.test_parity import FAMILIES

pytest.importorskip("transformers")

LN_FAMILIES = ("gpt2", "neox", "neox-seq")  # every residual reader is a LayerNorm
ALL_FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def _cases():
    for family in FAMILIES:
        applicable = [f for f in ALL_FLAGS if f != "center_writing_weights" or family in LN_FAMILIES]
        for flag in applicable:
            yield pytest.param(family, (flag,), id=f"{family}-{flag}")
        yield pytest.param(family, tuple(applicable), id=f"{family}-all")


def _load(family: str, **flags) -> HookedTransformer:
    return HookedTransformer.from_pretrained(saved(family, FAMILIES[family])[0], **flags)


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


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "gemma", "neox-seq"])
def test_fold_ln_leaves_unit_norms_and_unties(family):
    plain, model = _load(family), _load(family, fold_ln=True)
    norms = [model.ln_final] + [b.ln1 for b in model.blocks] + [b.ln2 for b in model.blocks]
    for norm in norms:
        assert torch.all(norm.w == 1)
        assert getattr(norm, "b", None) is None or torch.all(norm.b == 0)
    assert "blocks.0.ln1.hook_normalized" in model.hook_dict
    assert not model.cfg.tie_word_embeddings
    assert model.unembed.weight.data_ptr() != model.embed.weight.data_ptr()
    torch.testing.assert_close(model.W_E, plain.W_E, atol=0, rtol=0)  # folding never touches the embedding
    if family == "neox-seq":  # no attention biases in the checkpoint: the LN bias needed one
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


@pytest.mark.parametrize("family", ["llama3", "gemma"])
def test_centering_writing_weights_needs_layernorm(family):
    with pytest.raises(ValueError, match="center_writing_weights needs LayerNorm.*'RMS'"):
        _load(family, center_writing_weights=True)
    with pytest.raises(ValueError, match="center_writing_weights needs LayerNorm"):
        _load(family).process_weights(center_writing_weights=True)


def test_flags_must_be_bools():
    with pytest.raises(TypeError, match="fold_ln must be a bool"):
        _load("gpt2", fold_ln="yes")
