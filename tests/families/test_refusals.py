"""Checkpoint configs with a feature lens does not implement raise ``ValueError`` naming the key and value,
before any weight is read (the weights are deleted here, so reading them would fail differently)."""

from __future__ import annotations

import json
import shutil

import pytest

from lens import HookedTransformer
from tests.tiny import saved

pytest.importorskip("transformers")

CASES = [  # (tiny variant, config change, words of the error)
    ("llama3", {"rope_parameters": {"rope_type": "made_up", "factor": 4.0}}, "'made_up'.*supported: default"),
    ("phi3", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "'dynamic'"),  # Phi3Config refuses it too
    ("phi3", {"rope_scaling": {"type": "su", "short_factor": [1.0] * 4}}, "'long_factor'"),
    ("phi3", {"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}, "rotary_dim / 2"),
    ("opt", {"do_layer_norm_before": False}, "do_layer_norm_before=False"),
    ("opt", {"word_embed_proj_dim": 16}, "word_embed_proj_dim=16"),
    ("phi", {"qk_layernorm": True}, "qk_layernorm=True"),
    ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
    ("gpt_neo", {"attention_types": [[["global", "sparse"], 1]]}, "attention_types="),
    ("gemma2", {"layer_types": ["chunked_attention", "full_attention"]}, "chunked_attention"),
    ("qwen3_window", {"layer_types": ["full_attention", "linear_attention"]}, "linear_attention"),
    # config keys an adapter does not declare, or declares only switched off (tests/families/test_config_keys.py)
    ("llama3", {"use_fancy_new_attention": True}, "use_fancy_new_attention=True"),
    ("mixtral", {"quantization_config": {"quant_method": "gptq"}}, "quantization_config="),
    ("gpt2", {"scale_attn_weights": False}, "scale_attn_weights=False"),
    ("gpt2", {"add_cross_attention": True}, "add_cross_attention=True"),
    ("qwen2", {"use_mrope": True}, "use_mrope=True"),
    ("gemma2", {"use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
]


@pytest.mark.parametrize(("variant", "change", "words"), CASES, ids=[f"{v}-{w}" for v, _, w in CASES])
def test_unsupported_feature_raises_before_weights_are_read(tmp_path, variant, change, words):
    directory = tmp_path / variant
    shutil.copytree(saved(variant)[0], directory)
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(change)
    path.write_text(json.dumps(cfg))
    for weights in directory.glob("*.safetensors"):
        weights.write_bytes(b"not a checkpoint")  # reading them would raise a different error
    with pytest.raises(ValueError, match=words):
        HookedTransformer.from_pretrained(directory)
