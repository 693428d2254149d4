"""Every adapter declares the Hugging Face config keys it reads and those it may ignore; any other key, or a
declared-off feature switched on, raises ``ValueError`` before a weight is read."""

from __future__ import annotations

import json
import shutil

import pytest

from lens import HookedTransformer
from lens.families import ADAPTERS, tiny_configs
from lens.families.base import GENERIC_KEYS
from tests.tiny import saved

transformers = pytest.importorskip("transformers")

VARIANTS = tiny_configs()


class _Recording(dict):
    """A config dict that records every key read from it."""

    def __init__(self, data):
        super().__init__(data)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def _adapter(variant):
    cls = VARIANTS[variant][0]
    return next(ad for ad in ADAPTERS if cls in ad.architectures)


def _hf_dict(variant) -> dict:
    cls, kwargs = VARIANTS[variant]
    return getattr(transformers, cls).config_class(**kwargs).to_dict()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_reads_only_declared_keys(variant):
    adapter = _adapter(variant)
    hf = _Recording(_hf_dict(variant))
    adapter.config(hf)
    undeclared = sorted(hf.read - set(adapter.handles))
    assert not undeclared, f"{adapter.name}.config reads {undeclared} without declaring them in handles"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_key_of_the_transformers_config_is_declared(variant):
    adapter = _adapter(variant)
    adapter.check_keys(_hf_dict(variant))  # raises on any undeclared key


def test_declared_sets_do_not_overlap():
    for ad in ADAPTERS:
        for a, b in [("handles", "ignores"), ("handles", "defaults"), ("ignores", "defaults")]:
            both = set(getattr(ad, a)) & set(getattr(ad, b))
            assert not both, f"{ad.name}: {sorted(both)} in both {a} and {b}"
        generic = set(ad.handles) & GENERIC_KEYS
        assert not generic, f"{ad.name} handles keys it treats as generic: {sorted(generic)}"


def _load_changed(tmp_path, variant, change):
    directory = tmp_path / variant
    shutil.copytree(saved(variant)[0], directory)
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(change)
    path.write_text(json.dumps(cfg))
    for weights in directory.glob("*.safetensors"):
        weights.write_bytes(b"not a checkpoint")  # reading them would raise a different error
    return HookedTransformer.from_pretrained(directory)


@pytest.mark.parametrize(
    ("variant", "change", "words"),
    [
        ("llama3", {"use_fancy_new_attention": True}, "use_fancy_new_attention=True"),
        ("mixtral", {"quantization_config": {"quant_method": "gptq"}}, "quantization_config="),
        ("gpt2", {"scale_attn_weights": False}, "scale_attn_weights=False"),
        ("gpt2", {"add_cross_attention": True}, "add_cross_attention=True"),
        ("qwen2", {"use_mrope": True}, "use_mrope=True"),
        ("gemma2", {"use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
    ],
)
def test_unknown_or_unimplemented_keys_raise_before_weights_are_read(tmp_path, variant, change, words):
    with pytest.raises(ValueError, match=words):
        _load_changed(tmp_path, variant, change)


def test_a_declared_off_feature_loads_at_its_default(tmp_path):
    directory = tmp_path / "qwen2"
    shutil.copytree(saved("qwen2")[0], directory)
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_mrope": False}))
    assert HookedTransformer.from_pretrained(directory).cfg.n_layers == 2
