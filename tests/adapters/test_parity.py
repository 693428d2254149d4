"""Every family: a random-weight HF model saved to disk and loaded back gives HF's logits.

Adding a family = an adapter file in lens/adapters plus one line in FAMILIES below.
"""

from __future__ import annotations

import pytest
import torch

from lens import HookedTransformer
from lens.adapters import from_hf_model
from tests.adapters.helpers import VOCAB, reloaded, saved, tokens

pytest.importorskip("transformers")

_LLAMA = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48, vocab_size=VOCAB)
_LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8)  # fmt: skip

# name: (transformers model class, config kwargs) -- one line per family / variant
FAMILIES = {
    "gpt2": ("GPT2LMHeadModel", dict(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0)),
    "llama3": ("LlamaForCausalLM", dict(_LLAMA, num_key_value_heads=2, rope_parameters=_LLAMA3_ROPE)),
    "mistral": ("MistralForCausalLM", dict(_LLAMA, num_key_value_heads=2, sliding_window=5)),
    "neox": ("GPTNeoXForCausalLM", dict(_LLAMA, num_attention_heads=2, rotary_pct=0.25)),
    "neox-seq": ("GPTNeoXForCausalLM", dict(_LLAMA, use_parallel_residual=False, attention_bias=False)),
    "qwen2": ("Qwen2ForCausalLM", dict(_LLAMA, num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=True,
                                       sliding_window=5, max_window_layers=1)),
    "gemma": ("GemmaForCausalLM", dict(_LLAMA, num_key_value_heads=1, head_dim=16)),
}  # fmt: skip

# bf16 weights on both sides, HF loading the same directory with dtype=bf16. Llama, Mistral, Qwen2 and
# sequential NeoX agree bit for bit; GPT-2 / parallel NeoX (op order around fused LayerNorm and biases)
# and Gemma (HF multiplies its (1 + w) norm weight in float32 before casting, lens after) differ by
# <= 0.05 on O(1) logits, the size of either side's own bf16 error against float32. We allow 0.1.
BF16_ATOL = 0.1


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def family(request) -> str:
    return request.param


def _logits(model, toks):
    with torch.no_grad():
        out = model(toks)
    return out.logits if hasattr(out, "logits") else out


def test_logits_match_hf_fp32(family):
    directory, hf = saved(family, FAMILIES[family])
    model = HookedTransformer.from_pretrained(directory)
    assert model.cfg.dtype == torch.float32
    toks = tokens()
    torch.testing.assert_close(_logits(model, toks), _logits(hf, toks), atol=1e-4, rtol=0)


def test_logits_match_hf_bf16(family):
    directory, _ = saved(family, FAMILIES[family], torch.bfloat16)
    hf = reloaded(directory, torch.bfloat16)
    model = HookedTransformer.from_pretrained(directory, dtype="bf16")
    assert model.embed.weight.dtype == torch.bfloat16
    toks = tokens()
    got, expected = _logits(model, toks).float(), _logits(hf, toks).float()
    torch.testing.assert_close(got, expected, atol=BF16_ATOL, rtol=0)


def test_bf16_checkpoint_loads_exactly_in_fp32(family):
    """Upcast before any arithmetic (Gemma's 1 + w must not round in bf16), as transformers does."""
    directory, _ = saved(family, FAMILIES[family], torch.bfloat16)
    model = HookedTransformer.from_pretrained(directory, dtype="float32")
    toks = tokens()
    torch.testing.assert_close(
        _logits(model, toks), _logits(reloaded(directory, torch.float32), toks), atol=1e-4, rtol=0
    )


def test_model_object_source(family):
    _, hf = saved(family, FAMILIES[family])
    toks = tokens()
    for model in (HookedTransformer.from_pretrained(hf), from_hf_model(hf)):
        torch.testing.assert_close(_logits(model, toks), _logits(hf, toks), atol=1e-4, rtol=0)
