"""Input-major projection weights: same numbers as ``F.linear``, and the layout survives loading,
weight processing and dtype moves (a lost layout is only slower, so it is checked explicitly)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lens.adapters import from_hf_model
from lens.components.linear import input_major, linear
from tests.conftest import hf_model, tiny_model


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (2, 3, 4, 7)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stored", ["input_major", "contiguous"])
def test_linear_matches_f_linear(shape, bias, stored):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(11, 7, generator=g)
    if stored == "input_major":
        w = input_major(11, 7).detach().copy_(w)
        assert w.t().is_contiguous()
    b = torch.randn(11, generator=g) if bias else None
    x = torch.randn(*shape, generator=g)
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), atol=1e-6, rtol=1e-6)


def _projection_weights(model):
    return {n: p for n, p in model.named_parameters() if n.endswith("_weight")}


def _assert_input_major(model):
    weights = _projection_weights(model)
    assert weights  # the model has projections to check
    bad = [n for n, p in weights.items() if not p.t().is_contiguous()]
    assert not bad, f"lost the input-major layout: {bad}"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_layout_after_hf_conversion_processing_and_dtype(family):
    model = from_hf_model(hf_model(family))
    _assert_input_major(model)
    layer_norm = model.cfg.normalization == "LN"  # centering needs LayerNorm readers
    model.process_weights(fold_ln=True, center_writing_weights=layer_norm, center_unembed=True, fold_value_biases=True)
    _assert_input_major(model)
    _assert_input_major(model.to(torch.float64))


def test_untied_unembed_is_input_major():
    model = tiny_model("llama", tie_word_embeddings=False)
    assert model.unembed.weight.t().is_contiguous()
    assert model.unembed.weight.shape == (model.cfg.d_vocab, model.cfg.d_model)


def test_untie_embeddings_gives_an_input_major_copy():
    from lens.processing import untie_embeddings

    model = from_hf_model(hf_model("gpt2"))  # tied
    assert model.unembed.weight is model.embed.weight
    untie_embeddings(model)
    assert model.unembed.weight is not model.embed.weight
    assert model.unembed.weight.t().is_contiguous()
    torch.testing.assert_close(model.unembed.weight, model.embed.weight, atol=0, rtol=0)
