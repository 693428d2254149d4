"""Tiny random-weight Hugging Face models of every family lens has an adapter for (the oracle)."""

from __future__ import annotations

import pytest
import torch

VOCAB = 97
EOS = 2


def archs() -> list[str]:
    """Every architecture in ``lens.adapters.ADAPTERS``."""
    from lens.adapters import ADAPTERS

    return [arch for adapter in ADAPTERS for arch in adapter.architectures]


def hf_tiny(arch: str, seed: int = 0, window: int = 5, **overrides):
    """A 2-layer, d_model 32 random ``transformers`` model of ``arch`` in eval mode (fp32, eager-free sdpa).

    Generic config names (``hidden_size``, ``num_hidden_layers``...) reach GPT-2-style configs through
    their ``attribute_map``; unknown names are ignored by the config. Weights are drawn with
    ``initializer_range=0.2`` so logits are peaked and greedy ties are vanishingly unlikely.
    """
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, arch, None)
    if cls is None:
        pytest.skip(f"transformers has no {arch}")
    kw = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        intermediate_size=48, n_inner=48, vocab_size=VOCAB, max_position_embeddings=64, n_positions=64,
        sliding_window=window, bos_token_id=1, eos_token_id=EOS, pad_token_id=None, initializer_range=0.2,
        rotary_pct=0.5, tie_word_embeddings=False,
    )  # fmt: skip
    known = cls.config_class()  # pass only what the family knows: a stray sliding_window changes HF's cache
    kw = {k: v for k, v in kw.items() if hasattr(known, k) or k in known.attribute_map}
    kw.update(overrides)
    torch.manual_seed(seed)
    model = cls(cls.config_class(**kw)).eval()
    with torch.no_grad():  # make norm weights non-trivial
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def pair(arch: str, seed: int = 0, **overrides):
    """(hf model, lens model with the same weights)."""
    from lens.adapters import from_hf_model

    hf = hf_tiny(arch, seed, **overrides)
    return hf, from_hf_model(hf).eval()
