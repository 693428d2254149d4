"""Checking a store: every shard present, of its recorded size and SHA-256 (``python -m lens.store verify``).

>>> problems = lens.store.verify("acts")      # doctest: +SKIP
>>> problems                                   # [] when intact, else one line per bad shard
[]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lens.store import shards as fmt


def _records(folder: Path) -> tuple[dict, list[dict]]:
    path = folder / fmt.MANIFEST
    if not path.exists():
        raise fmt.StoreError(f"{folder} has no {fmt.MANIFEST}: not an activation store")
    manifest = json.loads(path.read_text())
    info = manifest.get("store", {})
    if info.get("complete"):
        return manifest, info["shards"]
    records = []  # an unfinished harvest: check what its completion records claim
    for p in sorted(folder.glob("shard-*.json")):
        try:
            records.append(json.loads(p.read_text()))
        except ValueError:
            records.append({"file": p.name, "bytes": -1, "sha256": ""})
    return manifest, records


def verify(folder: str | Path) -> list[str]:
    """One line per missing, truncated or corrupted shard of the store in ``folder`` (empty when intact)."""
    folder = Path(folder)
    _, records = _records(folder)
    problems = []
    for record in records:
        problem = fmt.check_shard(folder, record)
        if problem:
            problems.append(problem)
    return problems


def info(folder: str | Path) -> dict[str, Any]:
    """A summary of the store in ``folder``: model, hooks and shapes, rows, shards, whether it is complete."""
    folder = Path(folder)
    manifest, records = _records(folder)
    store = manifest["store"]
    ident = store["identity"]
    return {
        "folder": str(folder),
        "complete": bool(store.get("complete")),
        "model": ident["model"],
        "hooks": ident["hooks"],
        "context_size": ident["context_size"],
        "kept_positions_per_context": len(ident["kept_positions"]),
        "source": ident["source"].get("kind"),
        "shards": len(records),
        "rows": sum(r.get("rows", 0) for r in records),
        "bytes": sum(max(0, r.get("bytes", 0)) for r in records),
    }
