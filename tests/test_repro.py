"""Reproducibility manifests record what is needed and are deterministic."""

from __future__ import annotations

import json

import torch

import lens
import lens.repro
from tests.conftest import tiny_model


def test_manifest_contents(tmp_path):
    model = tiny_model("gpt2")
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", lambda x, hook: None)]):
        path = lens.repro.write_manifest(tmp_path, model=model, seeds=7, command=["prog", "--x"])
    data = json.loads(path.read_text())
    assert path.name == "manifest.json"
    assert data["lens"] == lens.__version__ and data["torch"] == torch.__version__
    assert data["seeds"] == {"torch": 7} and data["command"] == ["prog", "--x"]
    assert data["hooks"] == ["blocks.0.attn.hook_z"]
    assert data["model"]["dtype"] == "float32" and data["model"]["device"] == "cpu"
    assert data["model"]["weights_sha256"] == lens.repro.weights_sha256(model)


def test_weights_hash_tracks_weights():
    a, b = tiny_model("gpt2", seed=0), tiny_model("gpt2", seed=0)
    assert lens.repro.weights_sha256(a) == lens.repro.weights_sha256(b)
    with torch.no_grad():
        b.blocks[0].attn.qkv_weight[0, 0] += 1e-3
    assert lens.repro.weights_sha256(a) != lens.repro.weights_sha256(b)


def test_manifest_is_byte_identical_when_rewritten(tmp_path):
    model = tiny_model("llama")
    first = lens.repro.write_manifest(tmp_path / "a.json", model=model, seeds=0, command=["x"]).read_bytes()
    second = lens.repro.write_manifest(tmp_path / "b.json", model=model, seeds=0, command=["x"]).read_bytes()
    assert first == second
