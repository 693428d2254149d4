"""Shared fixtures. Tiny models come from the one builder, :mod:`tests.tiny` (names re-exported here)."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import VOCAB, hf_model, tiny_cfg, tiny_model

__all__ = ["VOCAB", "hf_model", "tiny_cfg", "tiny_model"]


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
