"""Every way of making a model records where its weights came from (``model.provenance``), and manifests say so.

One test per load path (local directory, hub name through a fake offline cache, ``transformers`` model object,
zoo model, config), the processing flags and ``context_size_override``, and weights edited after loading
(the manifest recomputes the hash and marks it as differing from the loaded checkpoint's).
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

import lens
import lens.repro
from lens import HookedTransformer, provenance
from tests.tiny import build_hf, copy_dir, saved

transformers = pytest.importorskip("transformers")

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
NO_PROCESSING = dict.fromkeys(
    ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices"),
    False,
)


def source_of(model) -> dict:
    return lens.repro.manifest(model, command=["x"])["model"]["source"]


def sizes(directory: Path, names) -> list[dict]:
    return [{"name": n, "bytes": (directory / n).stat().st_size} for n in sorted(names)]


@pytest.fixture
def offline(monkeypatch):
    """No network: HF_HUB_OFFLINE=1 and every socket refuses to connect."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def cache_model(cache: Path, repo: str, directory: Path, commit: str, refs=("main",)) -> Path:
    """``directory`` as snapshot ``commit`` of ``repo`` in a hand-built Hugging Face cache (see tests/test_hub.py)."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    shutil.copytree(directory, snapshot)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (storage / "refs" / ref).write_text(commit)
    return snapshot


# -- load paths ---------------------------------------------------------------------------------------
def test_local_directory_records_its_absolute_path_and_the_files_read(tmp_path, monkeypatch):
    directory = copy_dir(saved("llama3")[0], tmp_path / "ckpt")
    (directory / "README.md").write_text("not read by lens")
    monkeypatch.chdir(tmp_path)
    model = HookedTransformer.from_pretrained("ckpt")  # a relative path: recorded absolute
    source = source_of(model)
    assert source["kind"] == "directory"
    assert source["path"] == str(directory.absolute()) and Path(source["path"]).is_absolute()
    assert source["files"] == sizes(directory, ["config.json", "model.safetensors"])
    assert source["tokenizer"] is None
    assert model.provenance["weights_sha256"] == lens.repro.weights_sha256(model)


def test_sharded_and_torch_bin_checkpoints_list_every_file(tmp_path):
    _, hf = saved("llama3")
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 2
    files = source_of(HookedTransformer.from_pretrained(sharded))["files"]
    assert files == sizes(sharded, ["config.json", "model.safetensors.index.json", *shards])

    binary = copy_dir(saved("llama3")[0], tmp_path / "bin")
    (binary / "model.safetensors").unlink()
    torch.save(hf.state_dict(), binary / "pytorch_model.bin")
    assert source_of(HookedTransformer.from_pretrained(binary))["files"] == sizes(
        binary, ["config.json", "pytorch_model.bin"]
    )


def test_tokenizer_files_are_listed_when_the_directory_has_them(tmp_path):
    from tests.test_bos_default import write_tokenizer

    directory = copy_dir(saved("llama3")[0], tmp_path / "ckpt")
    write_tokenizer(directory, post="template", add_bos_token=True)
    source = source_of(HookedTransformer.from_pretrained(directory))
    names = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert source["files"] == sizes(directory, names)
    assert source["tokenizer"] == str(directory.absolute())


def test_hub_name_records_repo_revision_and_resolved_commit(tmp_path, offline):
    first, second = tmp_path / "first", tmp_path / "second"
    build_hf("gpt2", seed=0).save_pretrained(first)
    build_hf("gpt2", seed=1).save_pretrained(second)
    cache = tmp_path / "cache"
    snapshot_a = cache_model(cache, "org/tiny", first, COMMIT_A, refs=("main",))
    snapshot_b = cache_model(cache, "org/tiny", second, COMMIT_B, refs=("v2",))
    for revision, commit, snapshot in ((None, COMMIT_A, snapshot_a), ("v2", COMMIT_B, snapshot_b)):
        model = HookedTransformer.from_pretrained("org/tiny", revision=revision, cache_dir=cache)
        source = source_of(model)
        assert source["kind"] == "hub" and source["repo_id"] == "org/tiny" and source["requested"] == "org/tiny"
        assert source["revision"] == revision and source["commit"] == commit
        assert source["path"] == str(snapshot.absolute())
        assert source["files"] == sizes(snapshot, ["config.json", "model.safetensors"])
    # two snapshots, two different checkpoints: the records tell them apart
    a = HookedTransformer.from_pretrained("org/tiny", cache_dir=cache)
    b = HookedTransformer.from_pretrained("org/tiny", revision="v2", cache_dir=cache)
    assert a.provenance["weights_sha256"] != b.provenance["weights_sha256"]


def test_hub_alias_records_the_repository_it_means(tmp_path, offline):
    cache_model(tmp_path, "EleutherAI/pythia-70m", saved("neox")[0], COMMIT_A)
    source = source_of(HookedTransformer.from_pretrained("pythia-70m", cache_dir=tmp_path))
    assert source["repo_id"] == "EleutherAI/pythia-70m" and source["requested"] == "pythia-70m"
    assert source["commit"] == COMMIT_A


def test_transformers_model_object_records_name_or_path(tmp_path):
    directory, _ = saved("gpt2")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(directory))
    source = source_of(HookedTransformer.from_pretrained(hf))
    assert source["kind"] == "transformers_object"
    assert source["name_or_path"] == str(directory)
    assert source["class"] == "GPT2LMHeadModel" and source["transformers"] == transformers.__version__
    assert source["processing"] == NO_PROCESSING and source["context_size_override"] is None

    in_memory = build_hf("llama3")  # never saved: no name_or_path to point at
    model = HookedTransformer.from_pretrained(in_memory)
    assert source_of(model)["name_or_path"] is None and source_of(model)["class"] == "LlamaForCausalLM"


def test_from_hf_model_records_the_object_and_the_config_overrides():
    from lens.adapters import from_hf_model

    model = from_hf_model(build_hf("llama3"), n_ctx=16)
    source = source_of(model)
    assert source["kind"] == "transformers_object" and source["config_overrides"] == {"n_ctx": 16}
    assert model.provenance["weights_sha256"] == lens.repro.weights_sha256(model)


def test_zoo_model_records_its_file_and_its_sha256():
    model = lens.zoo.load("attn-only-2l")
    source = source_of(model)
    path = lens.zoo.WEIGHTS_DIR / "attn-only-2l.safetensors"
    assert source["kind"] == "zoo" and source["name"] == "attn-only-2l"
    assert source["path"] == str(path.absolute()) and source["file_sha256"] == lens.zoo.sha256_of(path)
    entry = lens.repro.manifest(model)["model"]
    assert entry["name"] == "attn-only-2l"
    # the manifest's weights hash is the weights' (not the file's), and it matches the one taken at load
    assert entry["weights_sha256"] == entry["weights_sha256_at_load"] == lens.repro.weights_sha256(model)
    assert entry["edited_after_load"] is False


def test_model_built_from_a_config_records_its_seed():
    cfg = lens.TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=50, n_ctx=8)
    model = HookedTransformer(cfg, seed=3)
    source = source_of(model)
    assert source == {"kind": "config", "init": "random", "seed": 3}
    assert model.provenance["weights_sha256"] == lens.repro.weights_sha256(HookedTransformer(cfg, seed=3))
    assert model.provenance["weights_sha256"] != lens.repro.weights_sha256(HookedTransformer(cfg, seed=4))
    assert HookedTransformer(cfg).provenance["seed"] == 0  # init_weights' default seed

    bare = HookedTransformer(cfg, init=False)  # uninitialised: nothing to compare against
    entry = lens.repro.manifest(bare)["model"]
    assert entry["source"] == {"kind": "config", "init": "none", "seed": None}
    assert entry["weights_sha256_at_load"] is None and entry["edited_after_load"] is None


def test_model_without_a_record_is_unknown():
    model = torch.nn.Linear(2, 2)
    entry = lens.repro.manifest(model)["model"]
    assert entry["source"] == {"kind": "unknown"} and entry["edited_after_load"] is None


# -- processing flags and context ---------------------------------------------------------------------
def test_processing_flags_and_context_override_are_recorded():
    directory, _ = saved("gpt2")
    plain = source_of(HookedTransformer.from_pretrained(directory))
    assert plain["processing"] == NO_PROCESSING and plain["context_size_override"] is None
    assert plain["dtype"] == "auto"
    model = HookedTransformer.from_pretrained(
        directory, fold_ln=True, center_unembed=True, context_size_override=16, dtype="bfloat16"
    )
    source = source_of(model)
    assert source["processing"] == {**NO_PROCESSING, "fold_ln": True, "center_unembed": True}
    assert source["context_size_override"] == 16 and source["dtype"] == "bfloat16"
    # the hash at load is that of the processed weights: a processed model is not "edited"
    assert lens.repro.manifest(model)["model"]["edited_after_load"] is False


# -- edited weights -----------------------------------------------------------------------------------
def test_weights_edited_after_load_are_flagged(tmp_path):
    model = HookedTransformer.from_pretrained(saved("llama3")[0])
    loaded = model.provenance["weights_sha256"]
    entry = lens.repro.manifest(model)["model"]
    assert entry["edited_after_load"] is False and "note" not in entry
    original = model.blocks[0].attn.qkv_weight[0, 0].item()
    with torch.no_grad():
        model.blocks[0].attn.qkv_weight[0, 0] += 1.0
    entry = lens.repro.manifest(model)["model"]
    assert entry["edited_after_load"] is True and "edited" in entry["note"]
    assert entry["weights_sha256"] == lens.repro.weights_sha256(model) != loaded
    assert entry["weights_sha256_at_load"] == loaded  # the checkpoint's hash is kept, not overwritten
    with torch.no_grad():
        model.blocks[0].attn.qkv_weight[0, 0] = original  # back to the checkpoint's values: no longer edited
    assert lens.repro.manifest(model)["model"]["edited_after_load"] is False
    data = json.loads(lens.repro.write_manifest(tmp_path, model=model, command=["x"]).read_text())
    assert data["model"]["edited_after_load"] is False


def test_edits_through_data_processing_and_casts_are_flagged():
    directory, _ = saved("gpt2")
    edited = HookedTransformer.from_pretrained(directory)
    edited.unembed.weight.data[0].zero_()  # .data bypasses autograd's version counter: the hash still sees it
    assert lens.repro.manifest(edited)["model"]["edited_after_load"] is True
    processed = HookedTransformer.from_pretrained(directory)
    processed.process_weights(fold_ln=True)
    entry = lens.repro.manifest(processed)["model"]
    assert entry["edited_after_load"] is True and entry["config"]["extra"]["weight_processing"] == ["fold_ln"]
    assert lens.repro.manifest(HookedTransformer.from_pretrained(directory).half())["model"]["edited_after_load"]


def test_offloaded_weights_hash_as_in_memory(tmp_path):
    pytest.importorskip("accelerate")
    directory, _ = saved("llama3")
    resident = HookedTransformer.from_pretrained(directory)
    placed = HookedTransformer.from_pretrained(
        directory, device_map={"": "cpu", "blocks.1": "disk"}, offload_folder=tmp_path
    )
    assert placed.blocks[1].attn.qkv_weight.is_meta
    assert placed.provenance["weights_sha256"] == resident.provenance["weights_sha256"]
    assert lens.repro.manifest(placed)["model"]["edited_after_load"] is False


def test_manifest_of_a_loaded_model_is_byte_identical_when_rewritten(tmp_path):
    model = HookedTransformer.from_pretrained(saved("llama3")[0], fold_ln=True)
    first = lens.repro.write_manifest(tmp_path / "a.json", model=model, seeds=0, command=["x"]).read_bytes()
    second = lens.repro.write_manifest(tmp_path / "b.json", model=model, seeds=0, command=["x"]).read_bytes()
    assert first == second and b'"kind": "directory"' in first


def test_files_read_names_relative_to_the_directory(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"123")
    files = provenance.files_read(tmp_path, [tmp_path / "sub" / "b.bin", tmp_path / "a.json", tmp_path / "missing"])
    assert files == [{"name": "a.json", "bytes": 2}, {"name": "sub/b.bin", "bytes": 3}]
    with pytest.raises(ValueError, match="kind"):
        provenance.record(torch.nn.Linear(1, 1), "somewhere")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_hash_is_the_bytes_whatever_the_layout_and_sees_every_piece(monkeypatch, dtype):
    """The hash is of the values in row-major order: a transposed view hashes as its contiguous copy, in pieces
    hashed in parallel or copied through a buffer; a change in any piece (or a swap of two rows) changes it."""
    import hashlib

    import lens.provenance as provenance

    monkeypatch.setattr(provenance, "_PIECE", 256)  # many pieces from a small tensor
    x = torch.randn(40, 24).to(dtype)

    def holder(t):
        m = torch.nn.Module()
        m.register_buffer("w", t)
        return m

    contiguous, view = holder(x.T.contiguous()), holder(x.T)
    assert not view.w.is_contiguous()
    assert provenance.weights_sha256(contiguous) == provenance.weights_sha256(view)
    # the oracle: name, dtype, shape, then the SHA-256 of each piece of whole rows
    row = 40 * x.element_size()
    data = x.T.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    step = max(1, 256 // row) * row
    expected = hashlib.sha256(f"w|{dtype}|(24, 40)|".encode())
    expected.update(b"".join(hashlib.sha256(data[i : i + step]).digest() for i in range(0, len(data), step)))
    assert provenance.weights_sha256(contiguous) == expected.hexdigest()
    for edit in (lambda t: t[-1, -1].add_(1), lambda t: t.index_copy_(0, torch.tensor([3, 17]), t[[17, 3]])):
        edited = x.T.contiguous()
        edit(edited)
        assert provenance.weights_sha256(holder(edited)) != provenance.weights_sha256(contiguous)
