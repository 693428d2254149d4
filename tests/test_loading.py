"""from_pretrained: sources, file formats, tokenizer, context defaults and override, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lens import HookedTransformer
from lens.config import DEFAULT_MAX_CONTEXT
from tests.tiny import HF_VOCAB as VOCAB
from tests.tiny import copy_dir, lens_config, saved, variants
from tests.tiny import hf_tokens as tokens

pytest.importorskip("transformers")


def _logits(model, toks):
    with torch.no_grad():
        out = model(toks)
    return out.logits if hasattr(out, "logits") else out


def _family_copy(name: str, tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    directory, hf = saved(name)
    return copy_dir(directory, tmp_path / name), hf


def _edit_config(directory: Path, text: bool = False, **changes) -> None:
    """Change config.json; ``text=True``: the language model's keys (a composite config's ``text_config``)."""
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    (cfg["text_config"] if text and isinstance(cfg.get("text_config"), dict) else cfg).update(changes)
    path.write_text(json.dumps(cfg))


# -- file formats ----------------------------------------------------------------------------------
def test_sharded_safetensors(tmp_path):
    _, hf = saved("llama3")
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    model = HookedTransformer.from_pretrained(tmp_path)
    torch.testing.assert_close(_logits(model, tokens()), _logits(hf, tokens()), atol=1e-4, rtol=0)


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_pytorch_model_bin_fallback(tmp_path, zipfile):
    directory, hf = _family_copy("neox", tmp_path)  # in-memory names (lm_head) differ from files (embed_out)
    (directory / "model.safetensors").unlink()
    torch.save(hf.state_dict(), directory / "pytorch_model.bin", _use_new_zipfile_serialization=zipfile)
    model = HookedTransformer.from_pretrained(directory)
    torch.testing.assert_close(_logits(model, tokens()), _logits(hf, tokens()), atol=1e-4, rtol=0)


def test_reader_converts_dtype_in_chunks(tmp_path, monkeypatch):
    import lens.loading

    monkeypatch.setattr(lens.loading, "CHUNK_BYTES", 1000)  # 40 x 30 fp32 rows of 120 B: several chunks
    tensors = {
        "w": torch.randn(40, 30),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
        "ids": torch.arange(4),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    reader = lens.loading.open_checkpoint(tmp_path, torch.bfloat16)
    for name, t in tensors.items():
        got = reader.get(name)
        torch.testing.assert_close(got, t.to(torch.bfloat16) if t.is_floating_point() else t, atol=0, rtol=0)


def test_tokenizer_attached(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    directory, _ = _family_copy("llama3", tmp_path)
    vocab = {"<s>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate("hello world lens".split())}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    model = HookedTransformer.from_pretrained(directory)
    assert model.tokenizer is not None
    assert model.to_str_tokens("hello lens") == ["<s>", "hello", "lens"]
    assert model("hello world").shape == (1, 3, VOCAB)
    assert HookedTransformer.from_pretrained(saved("llama3")[0]).tokenizer is None


# -- context ---------------------------------------------------------------------------------------
def _long_context_cases():
    """Every variant whose trained context comes from ``max_position_embeddings`` (not a position table)."""
    rotary = [name for name in variants() if lens_config(name).positional == "rotary"]
    return [(name, 131072 if i % 2 else 32768) for i, name in enumerate(rotary)]


@pytest.mark.parametrize("name, trained", _long_context_cases())
def test_long_context_defaults_to_4096(tmp_path, name, trained):
    directory, _ = _family_copy(name, tmp_path)
    _edit_config(directory, text=True, max_position_embeddings=trained)
    model = HookedTransformer.from_pretrained(directory)
    assert (model.cfg.n_ctx, model.cfg.n_ctx_trained) == (DEFAULT_MAX_CONTEXT, trained)
    assert HookedTransformer.from_pretrained(directory, context_size_override=trained).cfg.n_ctx == trained
    assert HookedTransformer.from_pretrained(directory, context_size_override=100).cfg.n_ctx == 100
    with pytest.raises(ValueError, match=rf"{trained + 1}.*{trained}"):
        HookedTransformer.from_pretrained(directory, context_size_override=trained + 1)


def _state_bytes(model) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("name", [name for name, _ in _long_context_cases()])
def test_context_allocates_nothing_per_position(tmp_path, name):
    """No buffer or parameter follows the context (masks, rotary tables and local windows are per forward)."""
    directory, _ = _family_copy(name, tmp_path)
    _edit_config(directory, text=True, max_position_embeddings=32768)
    small = HookedTransformer.from_pretrained(directory, context_size_override=2048)
    large = HookedTransformer.from_pretrained(directory, context_size_override=32768)
    assert _state_bytes(small) == _state_bytes(large)


def test_too_long_input_names_trained_maximum_and_override(tmp_path):
    directory, _ = _family_copy("mistral", tmp_path)
    _edit_config(directory, max_position_embeddings=32768)
    model = HookedTransformer.from_pretrained(directory, context_size_override=8)
    model(tokens(1, 8))
    with pytest.raises(ValueError, match=r"9 positions.*n_ctx is 8.*context_size_override.*32768"):
        model(tokens(1, 9))


def test_learned_positions_trained_context_is_table_size():
    directory = saved("gpt2")[0]
    model = HookedTransformer.from_pretrained(directory)
    assert model.cfg.n_ctx == model.cfg.n_ctx_trained == model.W_pos.shape[0] == 64
    assert HookedTransformer.from_pretrained(directory, context_size_override=16).cfg.n_ctx == 16
    with pytest.raises(ValueError, match="n_ctx_trained=64"):
        HookedTransformer.from_pretrained(directory, context_size_override=65)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-5, ValueError), (2.5, TypeError), ("4096", TypeError),
                                        (True, TypeError)])  # fmt: skip
def test_bad_context_size_override(bad, error):
    with pytest.raises(error, match="context_size_override"):
        HookedTransformer.from_pretrained(saved("gpt2")[0], context_size_override=bad)


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, error", [("float33", ValueError), ("int8", ValueError), (torch.int64, ValueError),
                                        (3, TypeError)])  # fmt: skip
def test_bad_dtype(bad, error):
    with pytest.raises(error, match="dtype"):
        HookedTransformer.from_pretrained(saved("gpt2")[0], dtype=bad)


def test_uncached_hub_name_offline_says_where_it_looked_and_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"not a local directory.*not in the Hugging Face cache") as e:
        HookedTransformer.from_pretrained("EleutherAI/pythia-70m")
    assert str(tmp_path / "hub") in str(e.value) and "hf download EleutherAI/pythia-70m" in str(e.value)


def test_other_bad_sources(tmp_path):
    with pytest.raises(TypeError, match="source"):
        HookedTransformer.from_pretrained(42)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        HookedTransformer.from_pretrained(tmp_path / "file.txt")


def test_missing_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HookedTransformer.from_pretrained(tmp_path)


def test_broken_config_json(tmp_path):
    directory, _ = _family_copy("llama3", tmp_path)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        HookedTransformer.from_pretrained(directory)
    other = copy_dir(saved("llama3")[0], tmp_path / "other")
    cfg = json.loads((other / "config.json").read_text())
    del cfg["hidden_size"]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing the field 'hidden_size'"):
        HookedTransformer.from_pretrained(other)


def test_unsupported_architecture_lists_supported(tmp_path):
    directory, _ = _family_copy("gpt2", tmp_path)
    _edit_config(directory, architectures=["FalconForCausalLM"], model_type="falcon")
    with pytest.raises(ValueError, match=r"unsupported architecture 'FalconForCausalLM'.*GPTNeoXForCausalLM"):
        HookedTransformer.from_pretrained(directory)


def test_no_weight_files(tmp_path):
    directory, _ = _family_copy("gpt2", tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors.*pytorch_model.bin"):
        HookedTransformer.from_pretrained(directory)


def _rewrite(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    directory, _ = _family_copy("llama3", tmp_path)
    _rewrite(directory, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]"):
        HookedTransformer.from_pretrained(directory)


def test_unexpected_tensor_is_named(tmp_path):
    directory, _ = _family_copy("llama3", tmp_path)
    _rewrite(directory, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"unexpected tensors \['model.layers.0.extra.weight'\]"):
        HookedTransformer.from_pretrained(directory)


def test_shape_mismatch_is_named(tmp_path):
    directory, _ = _family_copy("llama3", tmp_path)
    _edit_config(directory, intermediate_size=40)
    with pytest.raises(ValueError, match=r"shape \(48, 32\).*needs \(40, 32\)"):
        HookedTransformer.from_pretrained(directory)


def test_neox_fused_qkv_shape_mismatch(tmp_path):
    directory, _ = _family_copy("neox", tmp_path)
    _rewrite(directory, lambda t: t.update({k: v[:-2] for k, v in t.items() if "query_key_value" in k}))
    with pytest.raises(ValueError, match="query_key_value.*rows"):
        HookedTransformer.from_pretrained(directory)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(tmp_path, damage):
    directory, _ = _family_copy("llama3", tmp_path)
    path = directory / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100] if damage == "truncate" else bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        HookedTransformer.from_pretrained(directory)


def test_corrupt_pytorch_bin(tmp_path):
    directory, _ = _family_copy("gpt2", tmp_path)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="pytorch_model.bin is not a loadable"):
        HookedTransformer.from_pretrained(directory)


def test_sharded_index_with_missing_shard(tmp_path):
    _, hf = saved("gpt2")
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    sorted(tmp_path.glob("model-*.safetensors"))[0].unlink()
    with pytest.raises(FileNotFoundError, match="shard files that are not in"):
        HookedTransformer.from_pretrained(tmp_path)


# -- dtype="auto" ----------------------------------------------------------------------------------
def test_auto_dtype_follows_config_then_weights(tmp_path):
    import lens.loading

    directory = copy_dir(saved("llama3", dtype=torch.bfloat16)[0], tmp_path / "bf16")
    assert HookedTransformer.from_pretrained(directory).cfg.dtype == torch.bfloat16
    assert HookedTransformer.from_pretrained(directory, dtype="auto").cfg.dtype == torch.bfloat16
    assert HookedTransformer.from_pretrained(directory, dtype=torch.float16).cfg.dtype == torch.float16
    cfg = json.loads((directory / "config.json").read_text())
    for key in ("dtype", "torch_dtype"):
        cfg.pop(key, None)
    (directory / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "float16"}))  # the older key
    assert lens.loading.checkpoint_dtype(directory) == torch.float16
    (directory / "config.json").write_text(json.dumps(cfg))  # none: the first floating tensor's, as transformers
    assert HookedTransformer.from_pretrained(directory).cfg.dtype == torch.bfloat16
    (directory / "config.json").write_text(json.dumps({**cfg, "dtype": "int8"}))
    with pytest.raises(ValueError, match="int8"):
        HookedTransformer.from_pretrained(directory)
    assert HookedTransformer.from_pretrained(saved("llama3")[0]).cfg.dtype == torch.float32


def test_auto_dtype_keeps_a_model_objects_dtype_and_is_refused_by_configs():
    import lens.loading

    _, hf = saved("llama3", dtype=torch.bfloat16)
    assert HookedTransformer.from_pretrained(hf, dtype="auto").cfg.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="auto"):
        lens.TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_vocab=10, n_ctx=8, dtype="auto")
