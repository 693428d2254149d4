"""Tiny random-weight Hugging Face models of every family lens has an adapter for (the oracle).

Built by the one builder, :mod:`tests.tiny`, from the families' declared tiny configs; re-exported here
for the generation tests:

>>> hf, model = pair("GPT2LMHeadModel")   # (transformers model, lens model with the same weights)
"""

from __future__ import annotations

from tests.tiny import EOS, GEN_VOCAB, archs, hf_tiny, pair

VOCAB = GEN_VOCAB

__all__ = ["EOS", "VOCAB", "archs", "hf_tiny", "pair"]
