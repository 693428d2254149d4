"""demos/activation_store.py (linked from the README) runs as documented: it harvests the embedded model over the
standard library's source into a store that verifies, whose rows are the model's activations, and a second run
in the same folder reuses the store without rewriting it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

import lens
import lens.store

ROOT = Path(__file__).parent.parent


def _run(out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "demos/activation_store.py", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_activation_store_demo(tmp_path):
    out = tmp_path / "acts"
    text = _run(out)
    assert "verify: OK" in text
    store = lens.store.open(out)
    assert f"rows: {len(store)}" in text and len(store) > 50_000
    assert lens.store.verify(out) == []

    # the stored rows of context 0 are the model's activations on that context (BOS + the stored tokens)
    model = lens.zoo.load("gelu-4l")
    kept = len(store.identity["kept_positions"])
    assert store.index[0:kept][:, 0].eq(0).all()
    tokens = torch.cat([torch.tensor([model.tokenizer.bos_token_id]), store.tokens[0:kept]])[None]
    _, cache = model.run_with_cache(tokens, names_filter=list(store.hooks))
    for hook in store.hooks:
        torch.testing.assert_close(store[hook][0:kept], cache[hook][0, 1:], rtol=0, atol=0)

    # re-running in the same folder finds every shard done and rewrites nothing
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    again = _run(out)
    assert re.search(r"rows: (\d+)", again).group(1) == str(len(store))
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    shards = {k for k in before if k.endswith(".safetensors")}
    assert shards and all(before[k] == after[k] for k in shards)
