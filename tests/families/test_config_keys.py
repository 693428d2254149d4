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


def test_a_declared_off_feature_loads_at_its_default(tmp_path):
    directory = tmp_path / "qwen2"
    shutil.copytree(saved("qwen2")[0], directory)
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_mrope": False}))
    assert HookedTransformer.from_pretrained(directory).cfg.n_layers == 2
