"""Shared fixtures: tiny lens configs and tiny random-weight Hugging Face models (the oracle)."""

from __future__ import annotations

import pytest
import torch

import lens

VOCAB = 97


def tiny_cfg(family: str, **overrides) -> lens.TransformerConfig:
    """A tiny lens config in the shape of ``family`` (gpt2, llama, mistral, neox-like, attn_only)."""
    base = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=VOCAB, n_ctx=64)
    fam = {
        "gpt2": dict(act_fn="gelu_new", normalization="LN", positional="learned"),
        "llama": dict(
            act_fn="silu", normalization="RMS", positional="rotary", n_key_value_heads=2,
            gated_mlp=True, qkv_bias=False, attn_out_bias=False, mlp_bias=False, d_mlp=48,
        ),
        "mistral": dict(
            act_fn="silu", normalization="RMS", positional="rotary", n_key_value_heads=2,
            gated_mlp=True, qkv_bias=False, attn_out_bias=False, mlp_bias=False, d_mlp=48, window_size=5,
        ),
        "neox": dict(act_fn="gelu", normalization="LN", positional="rotary", rotary_dim=4, parallel_attn_mlp=True),
        "attn_only": dict(attn_only=True, normalization="LN", positional="learned"),
    }[family]  # fmt: skip
    base.update(fam)
    base.update(overrides)
    return lens.TransformerConfig(**base)


def tiny_model(family: str, seed: int = 0, **overrides) -> lens.HookedTransformer:
    model = lens.HookedTransformer(tiny_cfg(family, **overrides), seed=seed)
    # Random init with non-trivial norm weights/biases so tests exercise them.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b", "bias")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_model(family: str, seed: int = 0, **overrides):
    """A tiny random-weight transformers model of ``family`` in eval mode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    if family == "gpt2":
        kw = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64)
        kw.update(overrides)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw))
    elif family in ("llama", "mistral"):
        kw = dict(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, vocab_size=VOCAB, max_position_embeddings=128,
        )  # fmt: skip
        if family == "mistral":
            kw["sliding_window"] = 5
        kw.update(overrides)
        cls_cfg, cls = (
            (transformers.LlamaConfig, transformers.LlamaForCausalLM)
            if family == "llama"
            else (transformers.MistralConfig, transformers.MistralForCausalLM)
        )
        model = cls(cls_cfg(**kw))
    else:
        raise ValueError(family)
    # Perturb norms so LN/RMS weights and biases are not trivially 1/0.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
