"""Where a model's weights came from, recorded once when the model is made (``model.provenance``).

Every way of making a :class:`lens.HookedTransformer` leaves a plain ``dict`` on ``model.provenance``;
:func:`lens.repro.manifest` copies it into the manifest and compares the weights against it. The record is
written once and never updated, so it always says how the model was *made*; what happened after (edits,
processing, casts) is found by comparing it with the model as it is now.

Keys common to every record:

* ``kind``: ``"directory"`` (a local Hugging Face-format directory), ``"hub"`` (a hub name resolved through
  the Hugging Face cache), ``"transformers_object"`` (a ``transformers`` model in memory), ``"zoo"`` (an
  embedded :mod:`lens.zoo` model) or ``"config"`` (built from a :class:`~lens.config.TransformerConfig`).
* ``weights_sha256``: :func:`weights_sha256` of the weights as made (after any load-time processing), or
  None when they were not initialised (``init=False`` with nothing loaded).
* ``prepend_bos``: ``{"value": bool, "origin": ..., "reason": str}``, how ``cfg.default_prepend_bos`` was
  decided: ``origin`` is ``"tokenizer"`` (the checkpoint's tokenizer says), ``"family default"`` (it says
  nothing, or there is no tokenizer), ``"override"`` (``default_prepend_bos=`` at load) or ``"config"``
  (the config's own field: zoo models and models built from a config).

Loaded models (``directory``, ``hub``, ``transformers_object``) also record ``processing`` (every
:class:`~lens.processing.ProcessingFlags` flag and its value), ``context_size_override`` (None: the default
context), ``dtype`` as requested (``"auto"``: the checkpoint's), and ``tokenizer`` (where the attached tokenizer
came from: a directory path, ``"argument"`` for one passed in, or None). By kind:

* ``directory``: ``path`` (absolute) and ``files`` (``[{"name", "bytes"}]``, every file read: config,
  weights, shard index, tokenizer files).
* ``hub``: ``repo_id``, ``requested`` (the name as given, e.g. a TransformerLens alias), ``revision``
  (as requested; None means ``main``), ``commit`` (the resolved snapshot's commit hash), ``path`` (the
  snapshot directory) and ``files`` as for a directory.
* ``transformers_object``: ``name_or_path`` (None for an object never saved or loaded), ``commit`` (the
  config's ``_commit_hash``, when the object was loaded from the hub), ``class`` (e.g. ``"LlamaForCausalLM"``)
  and ``transformers`` (its version); from :func:`lens.loading.from_hf_model` also ``config_overrides``.
* ``zoo``: ``name``, ``path`` (the ``.safetensors`` file), ``file_sha256`` (that file's SHA-256) and
  ``dtype`` (as requested; None: the stored one).
* ``config``: ``init`` (``"random"`` or ``"none"``) and ``seed`` (the random init's seed).

This module depends on torch only, so loaders (:mod:`lens.loading`, :mod:`lens.zoo`) and the model record
provenance without importing :mod:`lens.repro`.

>>> model = HookedTransformer.from_pretrained(Path("ckpt/pythia-70m"))   # doctest: +SKIP
>>> model.provenance["kind"], model.provenance["files"][0]                # doctest: +SKIP
('directory', {'name': 'config.json', 'bytes': 570})
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["files_read", "record", "weights_sha256"]

KINDS = ("directory", "hub", "transformers_object", "zoo", "config")
BOS_ORIGINS = ("tokenizer", "family default", "override", "config")


def _offloaded(model: torch.nn.Module) -> dict[str, Any]:
    """``{module prefix: weights map}`` for the modules an accelerate hook keeps weights off (an offloaded
    block's parameters are meta tensors; their values live in the hook's ``weights_map``, keyed by the name
    inside the module)."""
    out: dict[str, Any] = {}
    for prefix, module in model.named_modules():
        weights = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
        if weights is not None:
            out[prefix] = weights
    return out


def _value(name: str, tensor: Tensor, offloaded: dict[str, Any]) -> Tensor:
    if not tensor.is_meta:
        return tensor
    for prefix in sorted(offloaded, key=len, reverse=True):
        if not prefix or name.startswith(prefix + "."):
            try:
                return offloaded[prefix][name[len(prefix) + 1 :] if prefix else name]
            except KeyError:
                break
    raise ValueError(f"cannot hash {name}: it is a meta tensor with no offloaded value (an unloaded model?)")


_PIECE = 16 << 20  # bytes hashed per task: a tensor's pieces are hashed by several threads at once


def _tensor_sha256(t: Tensor, pool: ThreadPoolExecutor | None, buffer: list[Tensor]) -> bytes:
    """The SHA-256 digests of ``t``'s bytes (row-major) in pieces of whole rows of about 16 MiB, concatenated.

    A contiguous CPU tensor is hashed in place, its pieces in parallel (hashlib releases the GIL). A GPU tensor
    or a non-contiguous view is copied a piece at a time into one reused CPU buffer (``buffer``: a list holding
    it, so that it is allocated once per hash), never whole."""
    t = t.detach().reshape(1) if t.dim() == 0 else t.detach()
    row_bytes = max(1, t[0].numel() * t.element_size())
    step = max(1, _PIECE // row_bytes)
    if t.device.type == "cpu" and t.is_contiguous():
        data = memoryview(t.reshape(-1).view(torch.uint8).numpy())
        pieces = [data[i : i + step * row_bytes] for i in range(0, len(data), step * row_bytes)]
        if pool is None or len(pieces) == 1:
            return b"".join(hashlib.sha256(p).digest() for p in pieces)
        return b"".join(pool.map(lambda p: hashlib.sha256(p).digest(), pieces))
    if not buffer or buffer[0].numel() < step * row_bytes:
        buffer[:] = [torch.empty(max(_PIECE, step * row_bytes), dtype=torch.uint8)]
    out = []
    for i in range(0, t.shape[0], step):
        piece = t[i : i + step]
        n = piece.numel() * piece.element_size()
        buffer[0][:n].view(piece.dtype).view(piece.shape).copy_(piece)
        out.append(hashlib.sha256(memoryview(buffer[0][:n].numpy())).digest())
    return b"".join(out)


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the model's parameters and persistent buffers, sorted by name: for each, its name, dtype and
    shape, and the SHA-256 of each piece of whole rows of about 16 MiB of its bytes (a hash tree one level deep,
    so that the pieces are hashed in parallel threads).

    A GPU tensor or a non-contiguous view is copied to the CPU a piece at a time into one buffer, never whole;
    the weights of blocks offloaded by :mod:`lens.placement` are read from their offload store, so a placed
    model hashes as the same model in memory does.

    >>> weights_sha256(torch.nn.Linear(2, 2))[:8]   # doctest: +SKIP
    '3f9a61c2'
    """
    digest = hashlib.sha256()
    offloaded: dict[str, Any] | None = None
    buffer: list[Tensor] = []
    threads = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) if threads > 1 else nullcontext() as pool:
        for name, tensor in sorted(model.state_dict().items()):
            if tensor.is_meta and offloaded is None:
                offloaded = _offloaded(model)
            t = _value(name, tensor, offloaded or {})
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.numel():
                digest.update(_tensor_sha256(t, pool, buffer))
    return digest.hexdigest()


def files_read(directory: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """``[{"name": path relative to directory, "bytes": size}]`` for the files ``paths`` (absolute, or relative
    to the working directory) that exist, sorted by name, each once; a file outside ``directory`` keeps its
    absolute path as its name."""
    directory = Path(os.path.abspath(directory))  # absolute, symlinks kept (a hub snapshot's files are links)
    out: dict[str, int] = {}
    for name in paths:
        path = Path(os.path.abspath(name))
        if path.is_file():
            try:
                relative = path.relative_to(directory).as_posix()
            except ValueError:
                relative = str(path)
            out[relative] = path.stat().st_size
    return [{"name": name, "bytes": size} for name, size in sorted(out.items())]


def record(
    model: torch.nn.Module,
    kind: str,
    *,
    prepend_bos: dict[str, Any] | None = None,
    hashed: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """Set ``model.provenance`` to ``{"kind": kind, **fields, "prepend_bos": ..., "weights_sha256": ...}``
    (the hash of the weights now, unless ``hashed=False``) and return it. ``prepend_bos`` defaults to the
    config's own value with origin ``"config"``."""
    if kind not in KINDS:
        raise ValueError(f"provenance kind {kind!r} must be one of {KINDS}")
    if prepend_bos is None:
        cfg = getattr(model, "cfg", None)
        prepend_bos = bos_choice(getattr(cfg, "default_prepend_bos", None), "config", "the model's config")
    if prepend_bos["origin"] not in BOS_ORIGINS:
        raise ValueError(f"prepend_bos origin {prepend_bos['origin']!r} must be one of {BOS_ORIGINS}")
    data = {"kind": kind, **copy.deepcopy(fields), "prepend_bos": dict(prepend_bos)}
    data["weights_sha256"] = weights_sha256(model) if hashed else None
    model.provenance = data
    return data


def bos_choice(value: bool | None, origin: str, reason: str) -> dict[str, Any]:
    """The ``prepend_bos`` entry of a record: ``{"value", "origin", "reason"}``."""
    return {"value": value, "origin": origin, "reason": reason}
