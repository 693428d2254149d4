"""Where :func:`lens.sae.train` reads its batches: an activation store, a model over text, or tensors.

Every source yields ``((epoch, batches done in that epoch), x [batch, d_in], y [batch, d_out])`` from a
position, epoch after epoch, so a resumed run picks up at the batch it stopped at. ``y`` is the target: ``x``
itself for an SAE (the same tensor), the activation at ``hook_name_out`` for a transcoder (rows aligned with
``x``: both come from the same store rows, the same forward pass, or the same rows of the pair of tensors).

- :class:`StoreBatches`: ``store.stream(hooks=[hook_name(, hook_name_out)], shuffle=True, seed=seed,
  drop_last=True)`` with ``set_epoch``;
- :class:`ModelBatches`: contexts packed by :class:`lens.store.TokenSource`, run through the model with
  ``run_with_cache(names_filter=[hook_name(, hook_name_out)], stop_at_layer=...)``, the activations of
  ``buffer_contexts`` contexts shuffled together (seeded) and cut into batches;
Activations of ``attn.hook_z`` (``[..., n_heads, d_head]``) are read with the heads flattened (``reshape =
"hook_z"``, SAELens's ``reshape_activations``), so the SAE sees one row of ``n_heads * d_head`` per token.

- :class:`TensorBatches`: a tensor ``[rows, d_in]`` (or a pair ``(x [rows, d_in], y [rows, d_out])``),
  permuted each epoch with a seeded generator.

>>> data = open_source(torch.randn(256, 8), "h", None, 64, 0, None, 128, None, 8, None, True)
>>> next(data.iterate((0, 0)))[0], data.d_in, data.d_out
((0, 1), 8, 8)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
Batch = tuple[tuple[int, int], Float[Tensor, "batch d_in"], Float[Tensor, "batch d_out"]]


def _stop_layer(*hook_names: str) -> int | None:
    """The ``stop_at_layer`` that still computes every one of ``hook_names`` (None: run the whole model)."""
    layers = [_BLOCK.match(h) for h in hook_names]
    return None if any(m is None for m in layers) else max(int(m.group(1)) for m in layers) + 1


class Batches:
    """A source of training batches (see the module docstring)."""

    d_in: int | None = None
    d_out: int | None = None
    reshape: str = "none"  # "hook_z": the rows are a hook_z activation's heads, flattened
    batch_size: int = 1
    describe: dict[str, Any] = {}

    def epoch(self, epoch: int, skip: int) -> Iterator[tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def iterate(self, pos: tuple[int, int]) -> Iterator[Batch]:
        """Batches from position ``pos`` = (epoch, batches of that epoch already done), forever."""
        epoch, skip = pos
        while True:
            done = skip
            for x, y in self.epoch(epoch, skip):
                done += 1
                yield (epoch, done), x, y
            if done == 0:
                raise ValueError(f"the source {self.describe} gives no full batch of {self.batch_size} rows")
            epoch, skip = epoch + 1, 0


def _check_matrix(what: str, t: Any) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or not t.is_floating_point():
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{what} must be a floating-point tensor [rows, width], got {got}")


class TensorBatches(Batches):
    def __init__(self, x: Tensor, y: Tensor | None, batch_size: int, seed: int):
        _check_matrix("an activation tensor source", x)
        if y is not None:
            _check_matrix("the target tensor y of a source (x, y)", y)
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"a source (x, y) needs as many rows in y as in x: x has {x.shape[0]} rows "
                                 f"{tuple(x.shape)}, y has {y.shape[0]} {tuple(y.shape)}")  # fmt: skip
        if x.shape[0] < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {x.shape[0]} rows of the activation tensor")
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.d_in, self.d_out = x.shape[1], (x if y is None else y).shape[1]
        self.describe = {"kind": "tensor", "shape": list(x.shape), "dtype": str(x.dtype)}
        if y is not None:
            self.describe.update(kind="tensor pair", shape_out=list(y.shape), dtype_out=str(y.dtype))

    def epoch(self, epoch, skip):
        order = torch.randperm(self.x.shape[0], generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        for b in range(skip, self.x.shape[0] // self.batch_size):
            take = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.x[take]
            yield x, (x if self.y is None else self.y[take])


class StoreBatches(Batches):
    def __init__(self, store: Any, hook_name: str, hook_name_out: str | None, batch_size: int, seed: int):
        self.store, self.hook, self.hook_out, self.batch_size, self.seed = (
            store, hook_name, hook_name_out, batch_size, seed,
        )  # fmt: skip
        widths = []
        self.flat = set()
        for h in [hook_name] if hook_name_out is None else [hook_name, hook_name_out]:
            shape = tuple(store[h].shape[1:])
            if len(shape) == 2 and h.endswith("attn.hook_z"):
                self.flat.add(h)
                shape = (shape[0] * shape[1],)
            if len(shape) != 1:
                raise ValueError(f"hook {h!r} has rows of shape {shape} in the store; an SAE reads 1-d rows")
            widths.append(shape[0])
        if len(store) < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {len(store)} rows of the store")
        self.d_in, self.d_out = widths[0], widths[-1]
        self.reshape = "hook_z" if hook_name in self.flat else "none"
        self.describe = {"kind": "store", "folder": str(getattr(store, "folder", "")), "rows": len(store)}

    def epoch(self, epoch, skip):
        hooks = [self.hook] if self.hook_out is None else [self.hook, self.hook_out]
        stream = self.store.stream(hooks=hooks, batch_size=self.batch_size, shuffle=True, seed=self.seed,
                                   rank=0, world_size=1, drop_last=True)  # fmt: skip
        stream.set_epoch(epoch)
        for i, batch in enumerate(stream):
            if i >= skip:
                x, y = (
                    batch[h].flatten(1) if h in self.flat else batch[h] for h in (self.hook, self.hook_out or self.hook)
                )
                yield x, (x if self.hook_out is None else y)


class ModelBatches(Batches):
    def __init__(self, model, tokens, hook_name, hook_name_out, batch_size, seed, model_batch_size, buffer_contexts,
                 exclude_bos):  # fmt: skip
        self.model, self.tokens, self.batch_size, self.seed = model, tokens, batch_size, seed
        self.hooks = [hook_name] if hook_name_out is None else [hook_name, hook_name_out]
        self.model_batch_size, self.stop = model_batch_size, _stop_layer(*self.hooks)
        self.drop_first = exclude_bos and tokens.prepend_bos
        self.kept = tokens.context_size - (1 if self.drop_first else 0)
        self.buffer = buffer_contexts or max(1, math.ceil(8 * batch_size / self.kept))
        self.describe = {"kind": "model", "model": getattr(model.cfg, "model_name", None), **tokens.describe}
        # the widths, from one token through the model (no text read yet)
        probe = torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device)
        with torch.no_grad():
            _, cache = model.run_with_cache(probe, names_filter=self.hooks, stop_at_layer=self.stop)
        acts = [cache[h].flatten(2) if cache[h].ndim == 4 else cache[h] for h in self.hooks]  # hook_z: heads flat
        self.d_in, self.d_out = acts[0].shape[-1], acts[-1].shape[-1]
        self.reshape = "hook_z" if cache[self.hooks[0]].ndim == 4 and hook_name.endswith("attn.hook_z") else "none"

    def _acts(self, contexts: list) -> list[Tensor]:
        out: list[list[Tensor]] = [[] for _ in self.hooks]
        for s in range(0, len(contexts), self.model_batch_size):
            ids = torch.from_numpy(np.stack(contexts[s : s + self.model_batch_size]))
            with torch.no_grad():
                _, cache = self.model.run_with_cache(ids, names_filter=self.hooks, stop_at_layer=self.stop)
            for i, h in enumerate(self.hooks):
                a = cache[h][:, 1:] if self.drop_first else cache[h]
                a = a.flatten(2) if a.ndim == 4 else a  # hook_z: one row of n_heads * d_head per token
                out[i].append(a.reshape(-1, a.shape[-1]))
        return [torch.cat(o) for o in out]

    def epoch(self, epoch, skip):
        chunk: list = []
        number = 0

        def flush(chunk, number, skip):
            n = len(chunk) * self.kept // self.batch_size
            if skip >= n:
                return skip - n, iter(())
            acts = self._acts(chunk)
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 7919 + number)
            order = torch.randperm(acts[0].shape[0], generator=gen)
            takes = (order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(skip, n))
            return 0, ((acts[0][t], acts[-1][t]) for t in takes)

        for _, ctx in self.tokens.contexts():
            chunk.append(ctx)
            if len(chunk) == self.buffer:
                skip, batches = flush(chunk, number, skip)
                yield from batches
                chunk, number = [], number + 1
        if chunk:
            skip, batches = flush(chunk, number, skip)
            yield from batches


def open_source(source, hook_name, hook_name_out, batch_size, seed, model, context_size, prepend_bos,
                model_batch_size, buffer_contexts, exclude_bos) -> Batches:  # fmt: skip
    """The :class:`Batches` of ``source`` (the arguments of :func:`lens.sae.train`); checks that the hooks exist
    and the shapes fit before any activation is read."""
    if model is not None:
        for arg, h in (("hook_name", hook_name), ("hook_name_out", hook_name_out)):
            if h is not None and h not in model.hook_dict:
                raise ValueError(f"{arg}={h!r} is not a hook of the model (model.hook_dict)")
        from lens.store.sources import TokenSource

        bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 2:
            raise ValueError(f"context_size={context_size!r} must be an int >= 2")
        tokens = TokenSource.from_any(source, model.tokenizer, context_size, bos)
        return ModelBatches(model, tokens, hook_name, hook_name_out, batch_size, seed, model_batch_size,
                            buffer_contexts, exclude_bos)  # fmt: skip
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(isinstance(t, torch.Tensor) for t in source):
        if hook_name_out is None:
            raise ValueError("a source (x, y) of two tensors trains a transcoder: pass hook_name_out= (the hook "
                             "y was read at)")  # fmt: skip
        return TensorBatches(source[0], source[1], batch_size, seed)
    if isinstance(source, torch.Tensor):
        if hook_name_out is not None:
            raise ValueError(f"hook_name_out={hook_name_out!r} needs targets: pass source=(x, y), a pair of tensors "
                             "whose rows line up, for a transcoder")  # fmt: skip
        return TensorBatches(source, None, batch_size, seed)
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not (folder / "manifest.json").is_file():
            raise ValueError(f"source={str(source)!r} is not an activation store folder (no manifest.json); to "
                             "stream text through a model pass model=...")  # fmt: skip
        import lens.store

        source = lens.store.open(folder)
    if hasattr(source, "stream") and hasattr(source, "hooks"):
        for arg, h in (("hook_name", hook_name), ("hook_name_out", hook_name_out)):
            if h is not None and h not in source:
                raise ValueError(f"{arg}={h!r} is not in the store; it holds {list(source.hooks)}")
        return StoreBatches(source, hook_name, hook_name_out, batch_size, seed)
    raise ValueError(f"unsupported source {type(source).__name__}: give an activation store (or its folder), an "
                     "activation tensor [rows, d_in] (a pair (x, y) for a transcoder), or model=... with text / "
                     "token ids")  # fmt: skip
