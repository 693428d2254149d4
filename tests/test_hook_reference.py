"""docs/hooks.md is generated from real models and must be current."""

from __future__ import annotations

from pathlib import Path

from lens.hook_reference import hook_table, markdown


def test_docs_hook_reference_is_current():
    committed = (Path(__file__).parent.parent / "docs" / "hooks.md").read_text()
    assert committed == markdown(), "regenerate with: python -m lens.hook_reference > docs/hooks.md"


def test_table_uses_tl_names():
    names = dict(hook_table({}))
    assert names["blocks.{i}.attn.hook_pattern"] == "[batch, head, query_pos, key_pos]"
    assert names["blocks.{i}.mlp.hook_post"] == "[batch, pos, d_mlp]"
    gqa = dict(hook_table({"positional": "rotary", "n_key_value_heads": 2}))
    assert gqa["blocks.{i}.attn.hook_rot_k"] == "[batch, pos, kv_head, d_head]"
