"""Reading an activation store: a memory-mapped, random-access view, a training stream, running statistics.

:func:`open` reads the manifest of a complete store and maps its shards lazily: ``store[hook]`` is a
tensor-like column ``[rows, *shape]`` whose slices and index lists read only the shards they touch;
``store.tokens`` (``[rows]``) and ``store.index`` (``[rows, 2]``: context number in the source order, position)
line up with it row for row. Each shard's SHA-256 is checked the first time it is read (``verify=False`` skips
that), so a corrupted shard raises :class:`~lens.store.shards.StoreError` naming it instead of returning its
bytes as activations.

>>> store = lens.store.open("acts")                          # doctest: +SKIP
>>> x = store["blocks.1.hook_resid_post"][1000:1064]         # [64, d_model], reads one shard
>>> loader = torch.utils.data.DataLoader(store.stream(batch_size=4096, shuffle=True, seed=0), batch_size=None)
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lens.store import shards as fmt


class Column:
    """One stored tensor across every shard, ``[rows, *shape]``: index it with an int, a slice or a list /
    tensor of row numbers to read those rows (a torch tensor); ``len``, ``shape`` and ``dtype`` need no read."""

    def __init__(self, store: Store, name: str, shape: tuple[int, ...], dtype: torch.dtype):
        self.store, self.name, self.dtype = store, name, dtype
        self.shape = (len(store), *shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Column({self.name!r}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> torch.Tensor:
        n = len(self)
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {key} is out of range for a store of {n} rows")
            k, j = self.store._locate(i)
            return self.store._tensor(k, self.name)[j].clone()
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[torch.arange(start, stop, step)]
            parts = []
            for k in range(self.store._locate(start)[0] if start < stop else 0, len(self.store.shards)):
                lo, hi = self.store._starts[k], self.store._starts[k] + self.store.shards[k]["rows"]
                if lo >= stop or start >= stop:
                    break
                parts.append(self.store._tensor(k, self.name)[max(start, lo) - lo : min(stop, hi) - lo])
            return torch.cat(parts) if parts else torch.empty((0, *self.shape[1:]), dtype=self.dtype)
        try:
            rows = torch.as_tensor(key)
        except (TypeError, ValueError, RuntimeError) as e:  # a tuple of slices, strings
            raise TypeError(
                f"index a store column with an int, a slice or a 1-d list of row numbers, not {key!r}"
            ) from e
        if rows.ndim == 1 and rows.numel() == 0:  # [] is a float tensor: no rows, not a bad index
            rows = rows.long()
        if rows.dtype == torch.bool or rows.is_floating_point() or rows.ndim != 1:
            raise TypeError(f"index a store column with an int, a slice or a 1-d list of row numbers, not {key!r}")
        rows = torch.where(rows < 0, rows + n, rows)
        if rows.numel() and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"row numbers must lie in [-{n}, {n}) for a store of {n} rows")
        out = torch.empty((rows.numel(), *self.shape[1:]), dtype=self.dtype)
        starts = torch.tensor(self.store._starts)
        shard = torch.bucketize(rows, starts, right=True) - 1
        for k in shard.unique().tolist():
            sel = (shard == k).nonzero().squeeze(1)
            out[sel] = self.store._tensor(k, self.name)[rows[sel] - self.store._starts[k]]
        return out

    def numpy(self) -> np.ndarray:
        """Every row, as one array (reads the whole column)."""
        return self[:].float().numpy() if self.dtype == torch.bfloat16 else self[:].numpy()


class Store:
    """A complete activation store (see the module docstring); build it with :func:`open`."""

    def __init__(self, folder: Path, manifest: dict, verify: bool = True):
        self.folder, self.manifest, self.verify = folder, manifest, verify
        info = manifest["store"]
        self.identity = info["identity"]
        self.shards: list[dict] = info["shards"]
        self.hooks = list(self.identity["hooks"])
        self._starts = [0]
        for r in self.shards:
            self._starts.append(self._starts[-1] + r["rows"])
        self._rows = self._starts.pop()
        self._maps: dict[int, tuple[dict, int]] = {}
        self._checked: set[int] = set()

    def __len__(self) -> int:
        return self._rows

    def __repr__(self) -> str:
        return f"Store({str(self.folder)!r}, rows={len(self)}, shards={len(self.shards)}, hooks={self.hooks})"

    def __contains__(self, name: str) -> bool:
        return name in self.identity["hooks"]

    def __getitem__(self, hook: str) -> Column:
        if hook not in self.identity["hooks"]:
            raise KeyError(f"{hook!r} is not in this store; it holds {self.hooks}")
        info = self.identity["hooks"][hook]
        return Column(self, hook, tuple(info["shape"]), getattr(torch, info["dtype"]))

    @property
    def tokens(self) -> Column:
        return Column(self, fmt.TOKENS, (), torch.int64)

    @property
    def index(self) -> Column:
        return Column(self, fmt.INDEX, (2,), torch.int64)

    def _locate(self, row: int) -> tuple[int, int]:
        k = bisect.bisect_right(self._starts, row) - 1
        return k, row - self._starts[k]

    def _tensor(self, k: int, name: str) -> torch.Tensor:
        record = self.shards[k]
        path = self.folder / record["file"]
        if k not in self._checked:
            if self.verify:
                problem = fmt.check_shard(self.folder, record)
                if problem:
                    raise fmt.StoreError(
                        f"{problem} in {self.folder}; `python -m lens.store verify {self.folder}` lists every bad "
                        "shard, and re-running the harvest rewrites them"
                    )
            elif not path.exists():
                raise fmt.StoreError(f"{record['file']} is missing from {self.folder}")
            self._maps[k] = fmt.header(path)
            self._checked.add(k)
        meta, offset = self._maps[k]
        return fmt.memmap(path, name, meta, offset)

    def stream(
        self,
        hooks: Sequence[str] | str | None = None,
        batch_size: int = 4096,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shards_in_buffer: int = 4,
        drop_last: bool = False,
    ) -> StoreStream:
        """A ``torch.utils.data.IterableDataset`` of batches (see :class:`StoreStream`)."""
        return StoreStream(self, hooks, batch_size, shuffle, seed, rank, world_size, shards_in_buffer, drop_last)

    def stats(self, hook: str) -> dict[str, Any]:
        """Mean, standard deviation and mean L2 norm per row of ``hook``, one shard at a time (float64)."""
        column = self[hook]
        total = 0
        s = torch.zeros(column.shape[1:], dtype=torch.float64)
        sq = torch.zeros_like(s)
        norm = 0.0
        for k in range(len(self.shards)):
            x = self._tensor(k, hook).to(torch.float64)
            total += x.shape[0]
            s += x.sum(0)
            sq += (x * x).sum(0)
            norm += x.reshape(x.shape[0], -1).norm(dim=1).sum().item()
        mean = s / max(total, 1)
        var = (sq / max(total, 1) - mean * mean).clamp_min(0)
        return {"rows": total, "mean": mean, "std": var.sqrt(), "norm_mean": norm / max(total, 1)}


class StoreStream(torch.utils.data.IterableDataset):
    """Batches ``{hook: [batch, *shape], "tokens": [batch], "index": [batch, 2]}`` for training.

    Shards are split between ranks (``rank::world_size``; by default the ``torch.distributed`` job's) and then
    between DataLoader workers; with ``shuffle`` the shard order is permuted each epoch (``set_epoch``) and
    rows are shuffled across a buffer of ``shards_in_buffer`` shards. Without shuffling a single process reads
    every row once in store order."""

    def __init__(self, store, hooks, batch_size, shuffle, seed, rank, world_size, shards_in_buffer, drop_last):
        super().__init__()
        hooks = store.hooks if hooks is None else [hooks] if isinstance(hooks, str) else list(hooks)
        for h in hooks:
            store[h]  # noqa: B018  (KeyError naming the hook)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive int")
        if (
            rank is None
            and world_size is None
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        rank, world_size = rank or 0, world_size or 1
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        self.store, self.hooks, self.batch_size, self.shuffle, self.seed = store, hooks, batch_size, shuffle, seed
        self.rank, self.world_size, self.buffer, self.drop_last, self.epoch = (
            rank,
            world_size,
            shards_in_buffer,
            drop_last,
            0,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> list[int]:
        order = list(range(len(self.store.shards)))
        if self.shuffle:
            order = torch.randperm(len(order), generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        mine = order[self.rank :: self.world_size]
        worker = torch.utils.data.get_worker_info()
        return mine if worker is None else mine[worker.id :: worker.num_workers]

    def __len__(self) -> int:
        rows = sum(self.store.shards[k]["rows"] for k in self._my_shards())
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        names = [*self.hooks, fmt.TOKENS, fmt.INDEX]
        shards = self._my_shards()
        worker = torch.utils.data.get_worker_info()
        part = self.rank * 1009 + (0 if worker is None else 1 + worker.id)  # each rank and worker its own order
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + part)
        carry: dict[str, torch.Tensor] | None = None
        step = self.buffer if self.shuffle else 1
        for g in range(0, len(shards), step):
            group = shards[g : g + step]
            pool = {n: torch.cat([self.store._tensor(k, n) for k in group]) for n in names}
            if carry is not None:
                pool = {n: torch.cat([carry[n], pool[n]]) for n in names}
            rows = pool[fmt.TOKENS].shape[0]
            order = torch.randperm(rows, generator=generator) if self.shuffle else torch.arange(rows)
            full = rows // self.batch_size * self.batch_size
            for s in range(0, full, self.batch_size):
                take = order[s : s + self.batch_size]
                yield {n: pool[n][take] for n in names}
            carry = {n: pool[n][order[full:]] for n in names} if full < rows else None
        if carry is not None and not self.drop_last:
            yield carry


def open(folder: str | Path, verify: bool = True) -> Store:  # noqa: A001  (lens.store.open, as the issue names it)
    """Open the complete store in ``folder``. Raises :class:`~lens.store.shards.StoreError` when the folder
    holds no manifest or an unfinished harvest (re-run it to complete), ``FileNotFoundError`` for no folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no activation store at {folder}: not a directory")
    path = folder / fmt.MANIFEST
    if not path.exists():
        raise fmt.StoreError(f"{folder} has no {fmt.MANIFEST}: not an activation store")
    try:
        manifest = json.loads(path.read_text())
        info = manifest["store"]
    except (ValueError, KeyError) as e:
        raise fmt.StoreError(f"{path} is not a lens activation store manifest ({e})") from e
    if info.get("format") != fmt.FORMAT or info.get("version") != fmt.VERSION:
        raise fmt.StoreError(f"{path} is format {info.get('format')!r} v{info.get('version')}; this lens reads "
                             f"{fmt.FORMAT!r} v{fmt.VERSION}")  # fmt: skip
    if not info.get("complete"):
        done = len(list(folder.glob("shard-*.json")))
        raise fmt.StoreError(f"the harvest into {folder} is not finished ({done} shard(s) done); re-run it to resume")
    return Store(folder, manifest, verify)
