"""Harvest hook activations over a token corpus into a sharded, resumable store, on one or many processes.

:func:`harvest` runs the model over the source's contexts, keeps only the named hooks (and only the layers up
to the last of them), and writes fixed-size shards (:mod:`lens.store.shards`) from a writer thread, so disk
writes overlap the next batches' compute. Shard ``k`` always holds contexts ``[k * S, (k + 1) * S)`` of the
source order (``S = shard_contexts``) and is computed by rank ``k % world_size``: the same shards, with the same
bytes on the CPU, come out of one process or of ``torchrun --nproc_per_node=N``, and a run stopped at any point
(killed, disk full) resumes with any number of processes after the last complete shard of each rank.

>>> import lens, lens.store
>>> model = lens.zoo.load("gelu-4l")
>>> lens.store.harvest(model, "/usr/lib/python3.11", hooks=["blocks.1.hook_resid_post"],   # doctest: +SKIP
...                    context_size=128, batch_size=16, out_dir="acts", max_tokens=100_000)
PosixPath('acts')
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lens.store import shards as fmt
from lens.store.sources import TokenSource
from lens.utils import release_freed_memory

SHARD_TARGET_BYTES = 64 << 20
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_QUERY_AXIS = ("hook_pattern", "hook_attn_scores")  # [batch, head, query_pos, key_pos]: a row per query
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist()[1] > 1:
        torch.distributed.barrier()


def config_sha256(cfg: Any) -> str:
    """SHA-256 of a model config (a dataclass), as sorted JSON."""
    data = asdict(cfg) if is_dataclass(cfg) else dict(vars(cfg))
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _positions(positions: Any, context_size: int, drop_first: bool) -> list[int]:
    if isinstance(positions, str) and positions == "all":
        kept = list(range(context_size))
    elif isinstance(positions, slice):
        try:
            kept = list(range(context_size))[positions]
        except (TypeError, ValueError) as e:  # a zero step, non-int bounds
            raise ValueError(
                f"positions={positions!r} is not a valid slice of the {context_size} positions: {e}"
            ) from e
    else:
        raise ValueError(f'positions={positions!r} must be "all" or a slice of the {context_size} positions')
    kept = [p for p in kept if not (drop_first and p == 0)]
    if not kept:
        raise ValueError(f"positions={positions!r} (exclude_bos={drop_first}) keeps no position of {context_size}")
    return kept


def _check_hooks(model: Any, hooks: Any) -> list[str]:
    if isinstance(hooks, str):
        hooks = [hooks]
    if not isinstance(hooks, Sequence) or not hooks or not all(isinstance(h, str) for h in hooks):
        raise TypeError(f"hooks={hooks!r} must be a non-empty list of hook names")
    unknown = [h for h in hooks if h not in model.hook_dict]
    if unknown:
        raise ValueError(f"unknown hook name(s) {unknown}; model.hook_dict lists the {len(model.hook_dict)} valid ones")
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"hooks={list(hooks)} names a hook twice")
    return list(hooks)


def _stop_layer(model: Any, hooks: list[str]) -> int | None:
    """The ``stop_at_layer`` that still fires every hook (None: the whole model, for hooks after the blocks)."""
    layers = []
    for h in hooks:
        m = _BLOCK.match(h)
        if m:
            layers.append(int(m.group(1)))
        elif not h.startswith(("hook_embed", "hook_pos_embed", "hook_tokens")):
            return None
    return max(layers, default=-1) + 1


def _shapes(model: Any, hooks: list[str], context_size: int) -> dict[str, list[int]]:
    """Each hook's per-row shape (activation shape without batch and position), from a two-token probe."""
    found: dict[str, list[int]] = {}

    def grab(act, hook):
        axis = 2 if hook.name.endswith(_QUERY_AXIS) else 1
        shape = [s for i, s in enumerate(act.shape) if i not in (0, axis)]
        if hook.name.endswith(_QUERY_AXIS):  # [head, key_pos]: the key axis is the context (the probe's is 2)
            shape[-1] = context_size
        found[hook.name] = shape

    probe = torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad(), model.hooks(fwd_hooks=[(h, grab) for h in hooks]):
        model(probe, return_type=None, stop_at_layer=_stop_layer(model, hooks))
    return found


def identity(model, hooks, shapes, dtype, source: TokenSource, positions, kept, batch_size, shard_contexts) -> dict:
    """What makes two harvests the same store: a resume must match it exactly."""
    return {
        "model": {
            "name": getattr(model.cfg, "model_name", type(model).__name__),
            "weights_sha256": __import__("lens.repro", fromlist=["weights_sha256"]).weights_sha256(model),
            "config_sha256": config_sha256(model.cfg),
        },
        "hooks": {h: {"shape": shapes[h], "dtype": str(dtype).removeprefix("torch.")} for h in hooks},
        "source": source.describe,
        "context_size": source.context_size,
        "prepend_bos": source.prepend_bos,
        "shuffle_seed": source.shuffle_seed,
        "positions": positions if positions == "all" else [positions.start, positions.stop, positions.step],
        "kept_positions": kept,
        "batch_size": batch_size,
        "shard_contexts": shard_contexts,
    }


def _check_writable(out: Path, rank: int) -> None:
    """Create ``out`` and check a file can be written in it (before any model compute)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{rank}-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(e.errno, f"the store folder {out} cannot be written: {e.strerror or e}") from e


def _open_folder(out: Path, ident: dict, rank: int) -> None:
    """Check the store in ``out`` (if any) matches ``ident``, or write the starting manifest (rank 0)."""
    path = out / fmt.MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())["store"]["identity"]
        except (ValueError, KeyError, TypeError) as e:
            raise fmt.StoreError(f"{path} is not a lens activation store manifest ({e}); use another folder") from e
        differ = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        if differ:
            raise fmt.StoreError(
                f"{out} holds a store harvested with a different {', '.join(differ)} "
                f"(stored: {json.dumps({k: old.get(k) for k in differ}, default=str)[:400]}); "
                "use another folder or delete this one"
            )
    elif rank == 0:
        _write_manifest(out, ident, None, None)
    for stale in out.glob(".*.tmp"):  # a killed run's half-written file (each rank removes only its shards')
        m = re.match(r"^\.shard-(\d+)\.", stale.name)
        if m and int(m.group(1)) % max(1, _dist()[1]) == rank:
            stale.unlink(missing_ok=True)


def _write_manifest(out: Path, ident: dict, records: list[dict] | None, model: Any) -> None:
    import lens.repro

    # the weights were hashed once, for the identity (harvesting does not change them)
    sha = ident["model"]["weights_sha256"]
    data = lens.repro.manifest(model, hooks=list(ident["hooks"]), weights_sha256=sha) if model is not None else {}
    data.pop("command", None)  # the same store from another command line (torchrun or not) is the same store
    data.pop("torch_threads", None)
    data["store"] = {"format": fmt.FORMAT, "version": fmt.VERSION, "identity": ident, "complete": records is not None}
    if records is not None:
        data["store"]["rows"] = sum(r["rows"] for r in records)
        data["store"]["contexts"] = records[-1]["contexts"][1] if records else 0
        data["store"]["shards"] = records
    text = (json.dumps(data, indent=1, sort_keys=True, default=str) + "\n").encode()
    path = out / fmt.MANIFEST
    if path.exists() and path.read_bytes() == text:  # a re-run of a complete harvest changes nothing
        return
    fmt.write_atomic(path, text)


class _Writer(threading.Thread):
    """Writes finished shards while the model computes the next ones; the first error stops it and is raised
    in the harvesting thread at its next hand-over."""

    def __init__(self, out: Path, depth: int = 2):
        super().__init__(daemon=True, name="lens-store-writer")
        self.out, self.jobs, self.error, self.records = out, queue.Queue(maxsize=depth), None, []

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is None:
                try:
                    self.records.append(fmt.write_shard(self.out, *job))  # (k, tensors, contexts)
                except BaseException as e:  # noqa: BLE001  (re-raised in the harvesting thread)
                    self.error = (job[0], e)
            # drop the shard's tensors and hand the freed memory back, or glibc keeps shard-sized buffers (in
            # this thread's arena too) and the peak creeps up with the corpus
            job = None
            release_freed_memory()

    def submit(self, job) -> None:
        self.raise_error()
        self.jobs.put(job)

    def finish(self) -> None:
        self.jobs.put(None)
        self.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self.error is not None:
            k, e = self.error
            done = sorted(r["shard"] for r in self.records)
            raise OSError(
                getattr(e, "errno", None),
                f"writing {fmt.shard_name(k)} to {self.out} failed: {e}. The {len(done)} shard(s) this process "
                "completed stay valid; fix the cause (disk space, permissions) and re-run the same command to resume",
            ) from e


def harvest(
    model: Any,
    source: Any,
    hooks: Sequence[str] | str,
    context_size: int,
    batch_size: int,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    max_tokens: int | None = None,
    positions: str | slice = "all",
    exclude_bos: bool = True,
    prepend_bos: bool | None = None,
    shuffle_seed: int | None = None,
    shard_contexts: int | None = None,
    progress: bool = True,
) -> Path:
    """Run ``model`` over ``source`` and store the activations of ``hooks`` in ``out_dir``; returns the folder.

    Args:
        source: see :class:`lens.store.sources.TokenSource` (text files or a folder of them, a token-id file, a
            list of strings, a ``datasets.Dataset``).
        hooks: hook names (``model.hook_dict``); the forward stops after the last block they need.
        context_size, batch_size: tokens per context (BOS included), contexts per forward.
        dtype: storage dtype (default: the model's); activations are rounded to it once.
        max_tokens: stop after ``max_tokens // context_size`` whole contexts (BOS slots count as tokens); default:
            the whole source.
        positions: ``"all"`` or a slice of context positions to keep; ``exclude_bos`` drops position 0 when
            contexts start with BOS.
        prepend_bos: BOS at each context's start (default: the model's ``cfg.default_prepend_bos``).
        shuffle_seed: permute the contexts with this seed (the order is recorded in the index).
        shard_contexts: contexts per shard (default: about 64 MiB of activations, a multiple of batch_size).

    Inside a ``torch.distributed`` job (``torchrun``), each rank computes the shards ``k`` with
    ``k % world_size == rank`` and rank 0 writes the final manifest. Re-running the same call resumes.

    Raises ``ValueError``/``TypeError`` for bad arguments (before any compute), :class:`~lens.store.shards.StoreError`
    when ``out_dir`` holds a store of another model, hooks, source or settings, ``OSError`` naming the folder or
    shard when it cannot be written.
    """
    hooks = _check_hooks(model, hooks)
    for name, value in (("batch_size", batch_size), ("max_tokens", max_tokens), ("shard_contexts", shard_contexts)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} must be a positive int")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if isinstance(context_size, int) and n_ctx is not None and context_size > n_ctx:
        raise ValueError(f"context_size={context_size} exceeds the model's context of {n_ctx} positions")
    asked = dtype
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    elif dtype is None:
        dtype = next(model.parameters()).dtype
    if dtype not in _DTYPES:  # the reader maps these (safetensors F16, BF16, F32, F64)
        raise ValueError(f"dtype={asked!r} must be a floating-point torch dtype (float32, bfloat16, float16, float64)")
    if max_tokens is not None and isinstance(context_size, int) and max_tokens < context_size:
        raise ValueError(f"max_tokens={max_tokens} is less than one context of context_size={context_size} tokens")
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    src = TokenSource.from_any(source, getattr(model, "tokenizer", None), context_size, bos, shuffle_seed)
    kept = _positions(positions, context_size, exclude_bos and bos)
    rank, world = _dist()
    out = Path(out_dir)
    _check_writable(out, rank)
    stop = _stop_layer(model, hooks)
    shapes = _shapes(model, hooks, context_size)
    row_bytes = sum(int(np.prod(s)) for s in shapes.values()) * torch.empty((), dtype=dtype).element_size()
    if shard_contexts is None:
        per = max(1, SHARD_TARGET_BYTES // max(1, row_bytes * len(kept)))
        shard_contexts = max(batch_size, per // batch_size * batch_size)
    ident = identity(model, hooks, shapes, dtype, src, positions, kept, batch_size, shard_contexts)
    _open_folder(out, ident, rank)
    _barrier()

    limit = None if max_tokens is None else max(1, max_tokens // context_size)
    pos_index = torch.tensor(kept)
    writer = _Writer(out)
    writer.start()
    bar = _progress(progress and rank == 0, None if limit is None else limit * context_size)
    n_contexts = 0
    try:
        with torch.no_grad():
            for k, first, contexts, numbers in _shard_contexts(src, shard_contexts, limit):
                n_contexts = first + len(contexts)
                if k % world != rank or _done(out, k, first, len(contexts)):
                    if bar is not None:
                        bar.update(len(contexts) * context_size)
                    continue
                tensors = _compute_shard(model, hooks, shapes, dtype, contexts, numbers, pos_index, batch_size, stop)
                writer.submit((k, tensors, (first, first + len(contexts))))
                if bar is not None:
                    bar.update(len(contexts) * context_size)
        writer.finish()
    finally:
        if writer.is_alive():
            writer.jobs.put(None)
        if bar is not None:
            bar.close()
    if n_contexts == 0:
        raise ValueError(f"the token source gave no context of {context_size} tokens")
    _barrier()
    if rank == 0:
        n_shards = -(-n_contexts // shard_contexts)
        records = [fmt.read_record(out, k) for k in range(n_shards)]
        missing = [k for k, r in enumerate(records) if r is None]
        if missing:
            raise fmt.StoreError(f"shards {missing[:10]} of {out} were not completed by their ranks; re-run to resume")
        _write_manifest(out, ident, records, model)
    _barrier()
    return out


def _done(out: Path, k: int, first: int, n: int) -> bool:
    """Shard ``k`` is complete with exactly these contexts (a tail shard of a shorter earlier run is redone) and
    its file is intact (size and SHA-256: a truncated or corrupted shard is rewritten)."""
    record = fmt.read_record(out, k)
    return record is not None and record["contexts"] == [first, first + n] and fmt.check_shard(out, record) is None


def _shard_contexts(src: TokenSource, per: int, limit: int | None):
    """``(shard number, first context, [contexts], [their source context numbers])`` in the harvest order (the
    source order, or its permutation with ``shuffle_seed``: then the numbers record the permutation)."""
    batch: list[np.ndarray] = []
    numbers: list[int] = []
    first = 0
    for i, (number, ctx) in enumerate(src.contexts(0, limit)):
        if not batch:
            first = i
        batch.append(ctx)
        numbers.append(number)
        if len(batch) == per:
            yield first // per, first, batch, numbers
            batch, numbers = [], []
    if batch:
        yield first // per, first, batch, numbers


def _compute_shard(model, hooks, shapes, dtype, contexts, numbers, pos_index, batch_size, stop) -> dict:
    """One shard's tensors: every kept row of every context, each hook's activations in ``dtype``."""
    kept = len(pos_index)
    rows = len(contexts) * kept
    out = {h: torch.empty((rows, *shapes[h]), dtype=dtype) for h in hooks}
    ids = torch.from_numpy(np.stack(contexts))
    cursor = [0]

    def keep(act, hook):
        axis = 2 if hook.name.endswith(_QUERY_AXIS) else 1
        picked = act.index_select(axis, pos_index.to(act.device))
        if axis == 2:
            picked = picked.transpose(1, 2)
        flat = picked.reshape(-1, *picked.shape[2:])
        out[hook.name][cursor[0] : cursor[0] + flat.shape[0]].copy_(flat)

    device = model.cfg.device
    with model.hooks(fwd_hooks=[(h, keep) for h in hooks]):
        for start in range(0, len(contexts), batch_size):
            tokens = ids[start : start + batch_size].to(device)
            model(tokens, return_type=None, stop_at_layer=stop)
            cursor[0] += tokens.shape[0] * kept
    out[fmt.TOKENS] = ids[:, pos_index].reshape(-1).to(torch.int64)
    context = torch.tensor(numbers, dtype=torch.int64).repeat_interleave(kept)
    out[fmt.INDEX] = torch.stack([context, pos_index.repeat(len(contexts))], dim=1).to(torch.int64)
    return out


def _progress(show: bool, total: int | None):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc="harvest", dynamic_ncols=True)
