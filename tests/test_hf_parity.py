"""Hugging Face is the oracle: logits, hidden states and loss for every family's tiny models.

Cases are the families' declared tiny configs (``lens.families.tiny_configs()``) plus a few tying and
head-count variants, so a new family file is covered without edits here.
"""

from __future__ import annotations

import pytest
import torch

from lens.adapters import from_hf_model
from tests.tiny import hf_model, hf_tokens, variants

pytest.importorskip("transformers")

EXTRA = {  # overrides of a declared variant
    "gpt2-untied": ("gpt2", {"tie_word_embeddings": False}),
    "llama3-tied-mha": ("llama3", {"tie_word_embeddings": True, "num_key_value_heads": 4}),
}
CASES = {name: (name, {}) for name in variants()} | EXTRA


@pytest.fixture(params=list(CASES.values()), ids=list(CASES))
def pair(request):
    family, overrides = request.param
    hf = hf_model(family, **overrides)
    return hf, from_hf_model(hf)


def test_logits_match_hf(pair):
    hf, model = pair
    toks = hf_tokens()
    with torch.no_grad():
        expected = hf(toks).logits
        got = model(toks)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_tied_embeddings_share_storage(pair):
    hf, model = pair
    tied = hf.config.tie_word_embeddings
    assert model.cfg.tie_word_embeddings == tied
    assert (model.unembed.weight.data_ptr() == model.embed.weight.data_ptr()) == tied


def test_residual_stream_matches_hidden_states(pair):
    hf, model = pair
    toks = hf_tokens()
    with torch.no_grad():
        hidden = hf(toks, output_hidden_states=True).hidden_states
        _, cache = model.run_with_cache(toks, names_filter=lambda n: "resid_p" in n)
    n = model.cfg.n_layers
    for layer in range(n):
        torch.testing.assert_close(cache["resid_pre", layer], hidden[layer], atol=1e-4, rtol=0)
    # HF's last hidden state has the final norm applied; the others equal resid_post of the layer before.
    for layer in range(n - 1):
        torch.testing.assert_close(cache["resid_post", layer], hidden[layer + 1], atol=1e-4, rtol=0)
    with torch.no_grad():
        final = model.ln_final(cache["resid_post", n - 1])
    torch.testing.assert_close(final, hidden[n], atol=1e-4, rtol=0)


def test_loss_matches_hf(pair):
    hf, model = pair
    toks = hf_tokens()
    with torch.no_grad():
        expected = hf(toks, labels=toks).loss
        got = model(toks, return_type="loss")
        per_token = model(toks, return_type="loss", loss_per_token=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert per_token.shape == (2, 15)
    torch.testing.assert_close(per_token.mean(), expected, atol=1e-5, rtol=0)


def test_explicit_attention_path_matches_hf(pair):
    """With pattern hooks (explicit scores), logits still equal HF's."""
    hf, model = pair
    toks = hf_tokens()
    with torch.no_grad():
        expected = hf(toks).logits
        got, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    pattern = cache["pattern", 0]
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
