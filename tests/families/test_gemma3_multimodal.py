"""Multimodal Gemma 3 (``Gemma3ForConditionalGeneration``) loads as its text-only language model.

The generic tests cover the tiny variant as ``transformers`` 5 saves it and holds it in memory; these check
what only released checkpoints have: their tensor names (``vision_tower.vision_model.*``, an untied
``language_model.lm_head``), sparse ``text_config`` dicts that rely on ``Gemma3TextConfig``'s defaults, and
processor files beside the tokenizer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lens import HookedTransformer
from lens.families import find_adapter
from lens.families.gemma3_multimodal import ADAPTER, TEXT_DEFAULTS
from tests.tiny import copy_dir, hf_tokens, saved

transformers = pytest.importorskip("transformers")

VARIANT = "gemma3-multimodal"

# the text_config of the released config.json files (only the keys that differ from Gemma3TextConfig's defaults)
_LINEAR_8 = {"factor": 8.0, "rope_type": "linear"}
RELEASED_TEXT = {
    "gemma-3-4b": dict(
        hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, sliding_window=1024, rope_scaling=_LINEAR_8
    ),
    "gemma-3-12b": dict(
        hidden_size=3840, intermediate_size=15360, num_attention_heads=16, num_hidden_layers=48,
        num_key_value_heads=8, sliding_window=1024, rope_scaling=_LINEAR_8,
    ),
    "gemma-3-27b": dict(
        head_dim=128, hidden_size=5376, intermediate_size=21504, num_attention_heads=32, num_hidden_layers=62,
        num_key_value_heads=16, query_pre_attn_scalar=168, sliding_window=1024, rope_scaling=_LINEAR_8,
    ),
}  # fmt: skip
_VISION = dict(
    hidden_size=1152, image_size=896, intermediate_size=4304, model_type="siglip_vision_model",
    num_attention_heads=16, num_hidden_layers=27, patch_size=14, vision_use_head=False,
)  # fmt: skip


def _released(text: dict) -> dict:
    return {
        "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
        "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
        "model_type": "gemma3", "text_config": {**text, "model_type": "gemma3_text"}, "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0", "vision_config": _VISION,
    }  # fmt: skip


def _logits(model, toks):
    with torch.no_grad():
        out = model(toks)
    return out.logits if hasattr(out, "logits") else out


def test_text_defaults_are_transformers_defaults():
    defaults = transformers.Gemma3TextConfig().to_dict()
    assert {k: defaults[k] for k in TEXT_DEFAULTS} == TEXT_DEFAULTS


@pytest.mark.parametrize("name", list(RELEASED_TEXT))
def test_released_config_reads_as_transformers_fills_it(name):
    """A sparse config.json gives the same lens config as transformers' filled-in config (to_dict)."""
    raw = _released(RELEASED_TEXT[name])
    assert find_adapter(raw) is ADAPTER
    filled = transformers.Gemma3Config(**{k: v for k, v in raw.items() if k != "torch_dtype"}).to_dict()
    ours, theirs = ADAPTER.make_config(raw), ADAPTER.make_config(filled)
    assert ours == theirs.replace(model_name=ours.model_name)
    text = {**TEXT_DEFAULTS, **RELEASED_TEXT[name]}
    assert (ours.n_layers, ours.d_model, ours.n_heads, ours.d_head) == (
        text["num_hidden_layers"], text["hidden_size"], text["num_attention_heads"], text["head_dim"]
    )  # fmt: skip
    assert ours.window_size == 1024 and ours.tie_word_embeddings
    assert [i for i in range(ours.n_layers) if i not in ours.window_layers] == list(range(5, ours.n_layers, 6))
    assert ours.rope_scaling["rope_type"] == "linear" and ours.rope_scaling["factor"] == 8.0


def test_text_config_keys_are_checked_by_the_text_adapter():
    raw = _released({**RELEASED_TEXT["gemma-3-4b"], "use_fancy_new_attention": True})
    with pytest.raises(ValueError, match="gemma3 config has key.*use_fancy_new_attention=True"):
        ADAPTER.make_config(raw)
    raw = _released({**RELEASED_TEXT["gemma-3-4b"], "use_bidirectional_attention": True})
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        ADAPTER.make_config(raw)
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        ADAPTER.make_config(_released({**RELEASED_TEXT["gemma-3-4b"], "final_logit_softcapping": 30.0}))
    with pytest.raises(ValueError, match="gemma3_multimodal config has key.*audio_config"):
        ADAPTER.make_config({**_released(RELEASED_TEXT["gemma-3-4b"]), "audio_config": {}})


def _released_names(name: str) -> str:
    """A transformers-5-saved tensor name as the released checkpoints spell it."""
    return re.sub(r"^vision_tower\.(?!vision_model\.)", "vision_tower.vision_model.", name)


def _rewrite(directory: Path, rename=_released_names, extra: dict | None = None) -> dict[str, torch.Tensor]:
    path = directory / "model.safetensors"
    tensors = {rename(k): v for k, v in load_file(path).items()}
    tensors.update(extra or {})
    save_file(tensors, path)
    return tensors


def test_released_tensor_names_load(tmp_path):
    directory, hf = saved(VARIANT)
    directory = copy_dir(directory, tmp_path / "released")
    names = _rewrite(directory)
    assert any(n.startswith("vision_tower.vision_model.") for n in names)
    assert any(n.startswith("multi_modal_projector.") for n in names)
    model = HookedTransformer.from_pretrained(directory)
    toks = hf_tokens()
    torch.testing.assert_close(_logits(model, toks), _logits(hf, toks), atol=1e-4, rtol=0)


def test_untied_head_under_language_model(tmp_path):
    """Older files keep an untied head as ``language_model.lm_head.weight``."""
    directory, hf = saved(VARIANT)
    directory = copy_dir(directory, tmp_path / "untied")
    head = torch.randn(hf.lm_head.weight.shape, generator=torch.Generator().manual_seed(3))
    _rewrite(directory, extra={"language_model.lm_head.weight": head})
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    model = HookedTransformer.from_pretrained(directory)
    assert not model.cfg.tie_word_embeddings
    torch.testing.assert_close(model.unembed.weight.detach(), head)
    torch.testing.assert_close(model.embed.weight.detach(), hf.model.language_model.embed_tokens.weight.detach())


@pytest.mark.parametrize("extra", ["language_model.model.layers.0.mlp.extra.weight", "audio_tower.proj.weight"])
def test_tensors_outside_the_skipped_towers_are_still_checked(tmp_path, extra):
    directory = copy_dir(saved(VARIANT)[0], tmp_path / "extra")
    _rewrite(directory, extra={extra: torch.zeros(2)})
    with pytest.raises(ValueError, match="unexpected tensors"):
        HookedTransformer.from_pretrained(directory)


def test_missing_language_model_tensor_raises(tmp_path):
    directory = copy_dir(saved(VARIANT)[0], tmp_path / "missing")
    path = directory / "model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if k != "language_model.model.norm.weight"}, path)
    with pytest.raises(ValueError, match=r"missing tensors.*model\.norm\.weight"):
        HookedTransformer.from_pretrained(directory)


def test_tokenizer_attaches_beside_processor_files(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    directory = copy_dir(saved(VARIANT)[0], tmp_path / "tok")
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate("hi lens".split())}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(directory / "tokenizer.json"))
    files = {
        "tokenizer_config.json": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                  "processor_class": "Gemma3Processor", "image_token": "<image_soft_token>"},
        "special_tokens_map.json": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                    "image_token": "<image_soft_token>", "bos_token": {"content": "<bos>"}},
        "processor_config.json": {"image_seq_length": 256, "processor_class": "Gemma3Processor"},
        "preprocessor_config.json": {"image_processor_type": "Gemma3ImageProcessor", "size": {"height": 896}},
        "chat_template.json": {"chat_template": "{{ bos_token }}"},
    }  # fmt: skip
    for name, data in files.items():
        (directory / name).write_text(json.dumps(data))
    model = HookedTransformer.from_pretrained(directory)
    assert model.tokenizer is not None and model.tokenizer.bos_token_id == 2
    assert model.to_str_tokens("hi lens") == ["<bos>", "hi", "lens"]
