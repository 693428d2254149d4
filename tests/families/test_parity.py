"""Every family: a random-weight HF model saved to disk and loaded back gives HF's logits.

The variants are the tiny configs the families declare (``lens.families.tiny_configs()``): adding a
family is one file in lens/families/ and no edit here.
"""

from __future__ import annotations

import pytest
import torch

from lens import HookedTransformer, loading
from lens.adapters import from_hf_model
from lens.families import ADAPTERS, tiny_configs
from tests.tiny import FAMILIES, hf_tokens, reloaded, saved

pytest.importorskip("transformers")

# bf16 weights on both sides, HF loading the same directory with dtype=bf16. Llama, Mistral, Qwen2 and
# sequential NeoX agree bit for bit; GPT-2 / parallel NeoX (op order around fused LayerNorm and biases)
# and Gemma / OLMo-2 (HF multiplies the norm weight in float32 before casting, lens after) differ by
# <= 0.065 on O(1) logits, the size of either side's own bf16 error against float32. We allow 0.1.
BF16_ATOL = 0.1


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def family(request) -> str:
    return request.param


def _logits(model, toks):
    with torch.no_grad():
        out = model(toks)
    return out.logits if hasattr(out, "logits") else out


def test_logits_match_hf_fp32(family):
    directory, hf = saved(family)
    model = HookedTransformer.from_pretrained(directory)
    assert model.cfg.dtype == torch.float32
    toks = hf_tokens()
    torch.testing.assert_close(_logits(model, toks), _logits(hf, toks), atol=1e-4, rtol=0)


def test_logits_match_hf_bf16(family):
    directory, _ = saved(family, dtype=torch.bfloat16)
    hf = reloaded(directory, torch.bfloat16)
    model = HookedTransformer.from_pretrained(directory, dtype="bf16")
    assert model.embed.weight.dtype == torch.bfloat16
    toks = hf_tokens()
    got, expected = _logits(model, toks).float(), _logits(hf, toks).float()
    torch.testing.assert_close(got, expected, atol=BF16_ATOL, rtol=0)


def test_bf16_checkpoint_loads_as_bf16_by_default(family):
    """dtype="auto" (the default) follows config.json, as transformers' dtype="auto": bf16 files load as bf16."""
    directory, _ = saved(family, dtype=torch.bfloat16)
    model = HookedTransformer.from_pretrained(directory)
    assert model.cfg.dtype == torch.bfloat16 and model.embed.weight.dtype == torch.bfloat16
    toks = hf_tokens()
    got, expected = _logits(model, toks).float(), _logits(reloaded(directory, torch.bfloat16), toks).float()
    torch.testing.assert_close(got, expected, atol=BF16_ATOL, rtol=0)
    assert HookedTransformer.from_pretrained(directory, dtype="float32").cfg.dtype == torch.float32


def test_bf16_checkpoint_loads_exactly_in_fp32(family):
    """Upcast before any arithmetic (Gemma's 1 + w must not round in bf16), as transformers does."""
    directory, _ = saved(family, dtype=torch.bfloat16)
    model = HookedTransformer.from_pretrained(directory, dtype="float32")
    toks = hf_tokens()
    torch.testing.assert_close(
        _logits(model, toks), _logits(reloaded(directory, torch.float32), toks), atol=1e-4, rtol=0
    )


def test_model_object_source(family):
    _, hf = saved(family)
    toks = hf_tokens()
    converted = loading.from_hf_model(hf, model_class=HookedTransformer)
    for model in (HookedTransformer.from_pretrained(hf), from_hf_model(hf), converted):
        torch.testing.assert_close(_logits(model, toks), _logits(hf, toks), atol=1e-4, rtol=0)


def test_every_family_declares_a_tiny_model_of_its_own_architecture():
    for adapter in ADAPTERS:
        assert adapter.tiny, f"the {adapter.name} adapter declares no tiny test model"
        for variant, (cls, _) in adapter.tiny.items():
            assert cls in adapter.architectures, f"{variant}: {cls} is not a {adapter.name} architecture"


def test_tiny_configs_are_tiny_copies():
    configs = tiny_configs()
    assert {"gpt2", "llama3", "mistral", "neox", "neox-seq", "qwen2", "gemma"} <= set(configs)
    configs["gpt2"][1]["n_layer"] = 99  # callers get copies, never the declarations
    assert tiny_configs()["gpt2"][1]["n_layer"] == 2


def test_old_import_paths_are_the_same_objects():
    import lens.adapters
    import lens.adapters.base
    import lens.adapters.gpt2
    import lens.families
    import lens.families.base
    import lens.families.gpt2

    assert lens.adapters.gpt2 is lens.families.gpt2 and lens.adapters.base is lens.families.base
    assert lens.adapters.ADAPTERS is lens.families.ADAPTERS and lens.adapters.find_adapter is lens.families.find_adapter
