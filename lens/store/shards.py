"""The activation store's files: shards written atomically, their completion records, and the manifest.

A store is a folder::

    manifest.json               what was harvested (model, hooks, shapes, dtype, source, settings) and, once
                                the harvest is complete, every shard with its rows and SHA-256
    shard-000000.safetensors    one tensor per hook ``[rows, *shape]``, ``tokens`` ``[rows]`` and
                                ``index`` ``[rows, 2]`` (context number in the source order, position)
    shard-000000.json           the shard's completion record: rows, contexts, SHA-256 of the shard file

A shard file is written under a temporary name, flushed with ``fsync`` and renamed into place, and only then
is its completion record written (the same way). A shard counts as done when its record exists and names the
file's size (a resuming harvest also checks its SHA-256 and rewrites a shard that fails); a killed run leaves at
most a temporary file, which the next run deletes and rewrites.

>>> write_atomic(Path("store/x.json"), b"{}")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save

MANIFEST = "manifest.json"
FORMAT = "lens-activation-store"
VERSION = 1
TOKENS, INDEX = "tokens", "index"
_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "I64": np.int64,
       "I32": np.int32, "U16": np.uint16, "I16": np.int16, "U8": np.uint8, "I8": np.int8}  # fmt: skip


class StoreError(ValueError):
    """A store that cannot be used as it is: a missing, truncated or corrupted shard (named), or a harvest that
    does not match the store already in the folder."""


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.safetensors"


def record_name(k: int) -> str:
    return f"shard-{k:06d}.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either nothing or all of it (temporary name, fsync,
    rename, fsync of the folder). Raises ``OSError`` naming ``path`` (disk full, no permission)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"could not write {path}: {e.strerror or e}") from e


def shard_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """The safetensors bytes of one shard (contiguous CPU tensors)."""
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": FORMAT})


def write_shard(folder: Path, k: int, tensors: dict[str, torch.Tensor], contexts: tuple[int, int]) -> dict:
    """Write shard ``k`` and then its completion record; returns the record."""
    data = shard_bytes(tensors)
    write_atomic(folder / shard_name(k), data)
    record = {
        "shard": k,
        "file": shard_name(k),
        "bytes": len(data),
        "rows": int(tensors[TOKENS].shape[0]),
        "contexts": list(contexts),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    write_atomic(folder / record_name(k), (json.dumps(record, sort_keys=True) + "\n").encode())
    return record


def read_record(folder: Path, k: int) -> dict | None:
    """Shard ``k``'s completion record when the shard is complete (record present, file of that size), else
    None (never written, or killed before its record)."""
    path = folder / record_name(k)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    shard = folder / record["file"]
    if not shard.exists() or shard.stat().st_size != record["bytes"]:
        return None
    return record


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def check_shard(folder: Path, record: dict) -> str | None:
    """Why shard ``record`` is unusable (missing, truncated, checksum mismatch), or None when it is intact."""
    path = folder / record["file"]
    if not path.exists():
        return f"{record['file']} is missing"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"{record['file']} is truncated or extended ({size} bytes, expected {record['bytes']})"
    if file_sha256(path) != record["sha256"]:
        return f"{record['file']} is corrupted (SHA-256 differs from its record)"
    return None


def header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors header of ``path`` and the offset of its data. Raises :class:`StoreError` naming the
    file when the header cannot be read or its tensors run past the end of the file."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            meta = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise StoreError(f"shard {path} is unreadable ({e}); run `python -m lens.store verify` and re-harvest") from e
    meta.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in meta.values()), default=0)
    if 8 + n + end > size:
        raise StoreError(
            f"shard {path} is truncated ({size} bytes, its header needs {8 + n + end}); re-run the harvest"
        )
    return meta, 8 + n


def memmap(path: Path, name: str, meta: dict, offset: int) -> torch.Tensor:
    """Tensor ``name`` of a shard, memory-mapped (read only; pages are read when touched)."""
    info = meta[name]
    start, stop = info["data_offsets"]
    dtype = _NP[info["dtype"]]
    shape = tuple(info["shape"])
    count = (stop - start) // np.dtype(dtype).itemsize
    if count == 0:
        t = torch.from_numpy(np.zeros(shape, dtype=dtype))
    else:
        arr = np.memmap(path, dtype=dtype, mode="c", offset=offset + start, shape=(count,)).reshape(shape)
        t = torch.from_numpy(arr)  # copy-on-write: never written back
    return t.view(torch.bfloat16) if info["dtype"] == "BF16" else t
