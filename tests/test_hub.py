"""Hub names through the local Hugging Face cache (``lens.hub``), with no network.

Each test builds a cache by hand in a temporary directory, laid out as ``huggingface_hub`` writes it:
``models--org--name/refs/<revision>`` holding a commit hash and ``snapshots/<hash>/`` holding the files
(the tiny checkpoints of ``tests/tiny.py``). ``HF_HUB_OFFLINE=1`` is set and every socket refuses to
connect, so a test that reached for the network would fail.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from lens import HookedTransformer, hub
from tests.tiny import build_hf, hf_tokens, saved

pytest.importorskip("huggingface_hub")
pytest.importorskip("transformers")

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Offline by the environment, and no socket may connect (a download attempt would raise here)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"lens.hub touched the network: connect{args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def cache_model(cache: Path, repo: str, directory: Path, commit: str = COMMIT_A, refs=("main",)) -> Path:
    """Put the files of ``directory`` into ``cache`` as snapshot ``commit`` of ``repo``, named by ``refs``."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    shutil.copytree(directory, snapshot)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (storage / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def _logits(model, toks=None):
    with torch.no_grad():
        return model(hf_tokens() if toks is None else toks)


def test_hub_name_loads_like_its_directory(tmp_path):
    directory, _ = saved("llama3")
    snapshot = cache_model(tmp_path, "org/tiny-llama", directory)
    model = HookedTransformer.from_pretrained("org/tiny-llama", cache_dir=tmp_path)
    torch.testing.assert_close(_logits(model), _logits(HookedTransformer.from_pretrained(directory)), atol=0, rtol=0)
    assert model.cfg.model_name == "org/tiny-llama"
    assert hub.resolve("org/tiny-llama", cache_dir=tmp_path) == snapshot
    assert hub.resolve("hf://org/tiny-llama", cache_dir=tmp_path) == snapshot


def test_cache_from_the_environment_at_call_time(tmp_path, monkeypatch):
    """huggingface_hub reads HF_HOME at import; lens reads it when called, so a later setting counts."""
    cache_model(tmp_path / "hub", "org/tiny-gpt2", saved("gpt2")[0])
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert hub.cache_directory() == tmp_path / "hub"
    model = HookedTransformer.from_pretrained("org/tiny-gpt2")
    torch.testing.assert_close(_logits(model), _logits(HookedTransformer.from_pretrained(saved("gpt2")[0])))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub.cache_directory() == tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        HookedTransformer.from_pretrained("org/tiny-gpt2")


def test_cached_snapshot_is_used_without_the_network_even_when_online(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # downloads allowed, but the cache answers first
    cache_model(tmp_path, "org/tiny", saved("gpt2")[0])
    assert HookedTransformer.from_pretrained("org/tiny", cache_dir=tmp_path).cfg.n_layers == 2


def test_transformer_lens_names_resolve(tmp_path):
    assert hub.hub_name("gpt2-small") == hub.hub_name("gpt2") == "openai-community/gpt2"
    assert hub.hub_name("pythia-70m") == hub.hub_name("Pythia-70M") == "EleutherAI/pythia-70m"
    assert hub.hub_name("gemma-2-2b") == "google/gemma-2-2b"
    assert hub.hub_name("EleutherAI/pythia-19m") == "EleutherAI/pythia-70m"  # TransformerLens's old name
    assert hub.hub_name("org/unknown") == "org/unknown"
    cache_model(tmp_path, "EleutherAI/pythia-70m", saved("neox")[0])
    model = HookedTransformer.from_pretrained("pythia-70m", cache_dir=tmp_path)
    torch.testing.assert_close(_logits(model), _logits(HookedTransformer.from_pretrained(saved("neox")[0])))
    assert model.cfg.model_name == "EleutherAI/pythia-70m"


def test_legacy_id_cached_under_its_own_name(tmp_path):
    """A cache filled by ``from_pretrained("gpt2")`` holds models--gpt2, not models--openai-community--gpt2."""
    snapshot = cache_model(tmp_path, "gpt2", saved("gpt2")[0])
    assert hub.resolve("gpt2", cache_dir=tmp_path) == snapshot


def test_alias_table_covers_the_supported_families():
    targets = set(hub.TL_ALIASES.values())
    for repo in (
        "openai-community/gpt2", "EleutherAI/pythia-70m", "mistralai/Mistral-7B-v0.1", "mistralai/Mixtral-8x7B-v0.1",
        "Qwen/Qwen2-0.5B", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen3-0.6B", "google/gemma-2b", "google/gemma-2-2b",
        "google/gemma-3-1b-pt", "EleutherAI/gpt-neo-125M", "facebook/opt-125m", "EleutherAI/gpt-j-6B",
        "microsoft/phi-2", "microsoft/Phi-3-mini-4k-instruct", "meta-llama/Llama-2-7b-hf",
    ):  # fmt: skip
        assert repo in targets, repo
    assert all(hub.is_hub_name(alias) for alias in hub.TL_ALIASES)


def test_revision_picks_another_snapshot(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    build_hf("gpt2", seed=0).save_pretrained(first)
    build_hf("gpt2", seed=1).save_pretrained(second)
    cache = tmp_path / "cache"
    cache_model(cache, "org/tiny", first, COMMIT_A, refs=("main",))
    cache_model(cache, "org/tiny", second, COMMIT_B, refs=("v2",))
    expect_a, expect_b = (_logits(HookedTransformer.from_pretrained(d)) for d in (first, second))
    assert not torch.allclose(expect_a, expect_b)
    for revision, expected in ((None, expect_a), ("main", expect_a), ("v2", expect_b), (COMMIT_B, expect_b)):
        model = HookedTransformer.from_pretrained("org/tiny", revision=revision, cache_dir=cache)
        torch.testing.assert_close(_logits(model), expected, atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match=r"not in the Hugging Face cache .* at revision 'v3'") as e:
        HookedTransformer.from_pretrained("org/tiny", revision="v3", cache_dir=cache)
    assert "hf download org/tiny --revision v3" in str(e.value)


def test_missing_model_with_local_files_only_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # local_files_only alone keeps lens off the network
    with pytest.raises(FileNotFoundError) as e:
        HookedTransformer.from_pretrained("org/absent", cache_dir=tmp_path, local_files_only=True)
    message = str(e.value)
    assert "'org/absent' is not a local directory" in message and f"Hugging Face cache {tmp_path}" in message
    assert "local_files_only=True" in message and "hf download org/absent" in message
    assert "huggingface-cli download org/absent" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE is set.*\('pythia-70m' is TransformerLens's name"):
        HookedTransformer.from_pretrained("pythia-70m", cache_dir=tmp_path)


def test_incomplete_snapshot_names_what_it_lacks(tmp_path):
    directory = tmp_path / "partial"
    directory.mkdir()
    shutil.copy(saved("gpt2")[0] / "config.json", directory)
    cache_model(tmp_path / "cache", "org/partial", directory)
    with pytest.raises(FileNotFoundError, match=r"cached snapshot .* lacks .*model.safetensors"):
        HookedTransformer.from_pretrained("org/partial", cache_dir=tmp_path / "cache")


def test_sharded_snapshot_needs_every_shard(tmp_path):
    directory = tmp_path / "sharded"
    build_hf("gpt2").save_pretrained(directory, max_shard_size="20KB")
    assert (directory / "model.safetensors.index.json").is_file()
    snapshot = cache_model(tmp_path / "cache", "org/sharded", directory)
    model = HookedTransformer.from_pretrained("org/sharded", cache_dir=tmp_path / "cache")
    torch.testing.assert_close(_logits(model), _logits(HookedTransformer.from_pretrained(directory)))
    shard = sorted(set(json.loads((snapshot / "model.safetensors.index.json").read_text())["weight_map"].values()))
    (snapshot / shard[-1]).unlink()
    with pytest.raises(FileNotFoundError, match=f"lacks .*{shard[-1]}"):
        HookedTransformer.from_pretrained("org/sharded", cache_dir=tmp_path / "cache")


def test_argument_types_are_checked_first():
    for kwargs, what in (
        (dict(revision=1), "revision"),
        (dict(cache_dir=3), "cache_dir"),
        (dict(local_files_only="yes"), "local_files_only"),
    ):
        with pytest.raises(TypeError, match=what):
            HookedTransformer.from_pretrained("org/never-looked-up", **kwargs)
    with pytest.raises(ValueError, match="revision"):
        HookedTransformer.from_pretrained("org/x", revision="")


def test_revision_with_a_directory_or_model_object_raises():
    directory, hf = saved("gpt2")
    for source in (directory, str(directory), hf):
        with pytest.raises(ValueError, match="not a hub name"):
            HookedTransformer.from_pretrained(source, revision="main")


def test_a_path_is_never_a_hub_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local directory") as e:
        HookedTransformer.from_pretrained(Path("org/name"))
    assert "cache" not in str(e.value)
    assert not hub.is_hub_name("./relative/dir") and not hub.is_hub_name("/abs/dir") and not hub.is_hub_name("a/b/c")


def test_download_fetches_only_the_files_lens_reads(tmp_path, monkeypatch):
    """With downloads allowed and nothing cached: one set of weights and the tokenizer files, by name."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    listed = [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
        "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "consolidated.safetensors", "pytorch_model.bin", "tokenizer.model", "original/params.json",
    ]  # fmt: skip
    index = tmp_path / "index.json"
    index.write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    calls = {}

    class Info:
        siblings = [type("Sibling", (), {"rfilename": f}) for f in listed]

    class Api:
        def model_info(self, repo, revision=None):
            calls["info"] = (repo, revision)
            return Info()

    def fake_file(repo, filename, revision=None, cache_dir=None):
        calls["file"] = filename
        return str(index)

    def fake_snapshot(repo, revision=None, cache_dir=None, allow_patterns=None, local_files_only=False):
        if local_files_only:
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError("not cached")
        calls["snapshot"] = (repo, revision, cache_dir, sorted(allow_patterns))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    got = hub.resolve("pythia-70m", revision="step1000", cache_dir=tmp_path / "cache")
    assert got == tmp_path / "snapshot"
    assert calls["info"] == ("EleutherAI/pythia-70m", "step1000") and calls["file"] == "model.safetensors.index.json"
    assert calls["snapshot"] == (
        "EleutherAI/pythia-70m", "step1000", str(tmp_path / "cache"),
        sorted(["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"]),
    )  # fmt: skip
