"""A preallocated key/value cache for fast autoregressive decoding, optionally stored as int8 or int4.

:class:`KVCache` allocates, once, ``[batch, n_key_value_heads, length, d_head]`` keys and values per
layer (``length`` = prompt + new tokens) and writes each step's keys in place, so a decode step never
grows a tensor with ``torch.cat``. A sliding-window layer (``cfg.layer_window(i)`` shorter than the
cache) keeps only its window as a ring buffer: position ``p`` lives in slot ``p % window``.

It implements the protocol ``HookedTransformer.forward(..., past_kv_cache=cache)`` speaks:

* ``prepare(attention_mask_new | None, q_len) -> (q_offset, key_mask | None, positions)`` before a
  forward: where the new tokens go, the validity of every key so far (None when nothing is padding)
  and the new tokens' padding-aware positions (a left-padded row is numbered as if it ran alone);
  it also sets ``key_positions``, ``{window: [window] positions}`` of ring slots on decode steps
  whose ring has wrapped (None otherwise), which the attention mask reads;
* ``update(layer, k, v) -> (k_all, v_all)`` in each attention layer, ``k``/``v``
  ``[batch, pos, kv_head, d_head]`` after rotary; returns the keys that layer attends to: all cached
  positions, or for a ring layer the positions inside the window (slot order once it has wrapped);
  ``update_heads`` is the same in the ``[batch, kv_head, pos, d_head]`` layout;
* ``advance(q_len)`` after the forward.

``kv_cache_dtype="int8"`` stores keys and values as int8 with one float32 scale per token and head
(symmetric, ``scale = max|x| / 127``): ``(1 + 4 / d_head) / 4`` of the fp32 memory, 0.27x at
``d_head=64``. ``kv_cache_dtype="int4"`` packs two values per byte with one float16 scale per group of 32
values along ``d_head`` (or ``d_head`` when smaller): ``1/8 + 1/(2G)`` of the fp32 memory, 0.14x at
``d_head=64`` (:mod:`lens.generation.kv_quant`). The tokens of the current forward attend to their own keys
at full precision; older keys are dequantized.

>>> cache = KVCache(model.cfg, batch=1, max_len=20)
>>> logits = model(prompt_tokens, past_kv_cache=cache)          # prefill: cache.offset == 5
>>> logits = model(next_token[:, None], past_kv_cache=cache)    # one decode step
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lens.config import TransformerConfig
from lens.generation.kv_quant import INT4_GROUP, dequantize_int4, dequantize_int8, quantize_int4, quantize_int8
from lens.generation.kv_quant import int4_group as int4_group_size

KV_CACHE_DTYPES = (None, "int8", "int4")


class _LayerStore:
    """One layer's keys and values, ``[batch, kv_head, size, d_head]``.

    ``bits`` 0 stores them in ``dtype``; 8 as int8 + a float32 scale per row; 4 as ``d_head / 2`` bytes of packed
    nibbles + a float16 scale per ``group`` values (:mod:`lens.generation.kv_quant`).
    """

    def __init__(self, shape: tuple[int, ...], size: int, ring: bool, dtype, device, bits: int = 0, group: int = 0):
        self.size, self.ring, self.dtype, self.bits, self.group = size, ring, dtype, bits, group
        *lead, d_head = shape
        if bits == 8:
            data, scale = (shape, torch.int8), ((*lead, 1), torch.float32)
        elif bits == 4:
            data, scale = ((*lead, d_head // 2), torch.uint8), ((*lead, d_head // group), torch.float16)
        else:
            data, scale = (shape, dtype), None
        self.k = torch.zeros(data[0], dtype=data[1], device=device)
        self.v = torch.zeros(data[0], dtype=data[1], device=device)
        if scale is not None:
            self.k_scale = torch.zeros(scale[0], dtype=scale[1], device=device)
            self.v_scale = torch.zeros(scale[0], dtype=scale[1], device=device)

    @property
    def quantized(self) -> bool:
        return self.bits != 0

    def tensors(self) -> list[str]:
        return ["k", "v", "k_scale", "v_scale"] if self.bits else ["k", "v"]

    def _quantize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return quantize_int8(x) if self.bits == 8 else quantize_int4(x, self.group)

    def _dequantize(self, q: Tensor, scale: Tensor) -> Tensor:
        if self.bits == 8:
            return dequantize_int8(q, scale, self.dtype)
        return dequantize_int4(q, scale, self.group, self.dtype)

    def write(self, idx: slice | Tensor, k: Tensor, v: Tensor) -> None:
        """Store ``k``/``v`` ``[b, kv, n, dh]`` at slots ``idx``."""
        if self.bits:
            (kq, ks), (vq, vs) = self._quantize(k), self._quantize(v)
            self.k[:, :, idx], self.k_scale[:, :, idx] = kq, ks
            self.v[:, :, idx], self.v_scale[:, :, idx] = vq, vs
        else:
            self.k[:, :, idx] = k
            self.v[:, :, idx] = v

    def read(self, idx: slice | Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values at slots ``idx`` in the model dtype (views when not quantized)."""
        if not self.bits:
            return self.k[:, :, idx], self.v[:, :, idx]
        k = self._dequantize(self.k[:, :, idx], self.k_scale[:, :, idx])
        v = self._dequantize(self.v[:, :, idx], self.v_scale[:, :, idx])
        return k, v


class KVCache:
    """Preallocated per-layer key/value buffers for ``batch`` sequences of up to ``max_len`` positions.

    Args:
        cfg: the model's config (layers, kv heads, d_head, windows, dtype).
        batch: number of sequences (rows).
        max_len: positions to hold (prompt + new tokens); writing beyond raises ``ValueError``.
        dtype / device: of the buffers (default ``cfg.dtype`` / ``cfg.device``); ``device`` also holds the
            padding mask and positions (the embedding's device).
        kv_cache_dtype: None (the model dtype), ``"int8"`` or ``"int4"`` (:mod:`lens.generation.kv_quant`).
        layer_devices: one device per layer for a model placed on several devices (each layer's keys and values
            live where that layer computes: ``model.block_devices()``); default ``device`` for all.
        spare: extra slots in each sliding-window ring buffer (``window + spare``), so that up to ``spare + 1``
            positions written speculatively can be rolled back with :meth:`truncate` without having overwritten
            a key still inside the window (speculative decoding allocates its largest proposal length).
        int4_group: values per int4 scale along ``d_head`` (``min(int4_group, d_head)``; ``d_head`` must be even and
            a multiple of it, else ``ValueError``).

    Attributes:
        offset: positions written so far (the next token's index in the sequence).
        key_positions: ring-slot positions per window for the current step, or None.

    >>> cache = KVCache(cfg, batch=2, max_len=64, kv_cache_dtype="int8")
    >>> cache.nbytes < KVCache(cfg, batch=2, max_len=64).nbytes
    True
    """

    def __init__(
        self,
        cfg: TransformerConfig,
        batch: int,
        max_len: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        kv_cache_dtype: str | None = None,
        layer_devices: list[torch.device] | None = None,
        spare: int = 0,
        int4_group: int = INT4_GROUP,
    ):
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {kv_cache_dtype!r}")
        bits = {None: 0, "int8": 8, "int4": 4}[kv_cache_dtype]
        group = int4_group_size(cfg.d_head, int4_group) if bits == 4 else 0  # ValueError when d_head cannot pack
        for name, value in (("batch", batch), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(spare, bool) or not isinstance(spare, int) or spare < 0:
            raise ValueError(f"spare must be an int >= 0, got {spare!r}")
        self.cfg, self.batch, self.max_len, self.spare = cfg, batch, max_len, spare
        self.dtype = dtype or cfg.dtype
        self.device = torch.device(device if device is not None else (cfg.device or "cpu"))
        self.kv_cache_dtype = kv_cache_dtype
        if layer_devices is not None and len(layer_devices) != cfg.n_layers:
            raise ValueError(f"layer_devices has {len(layer_devices)} entries; the model has {cfg.n_layers} layers")
        devices = [self.device] * cfg.n_layers if layer_devices is None else [torch.device(d) for d in layer_devices]
        self.offset = 0
        self.key_positions: dict[int, Int[Tensor, " k"]] | None = None
        # ungrouped GQA (cfg.ungroup_grouped_query_attention) attends with one key/value head per query head
        shape_kv = (batch, cfg.n_heads if cfg.ungroup_grouped_query_attention else cfg.n_key_value_heads)
        self.layers: list[_LayerStore] = []
        self._windows: dict[int, int] = {}  # window -> ring size (window + spare)
        for i in range(cfg.n_layers):
            window = cfg.layer_window(i)
            ring = window is not None and window + spare < max_len
            size = window + spare if ring else max_len
            if ring:
                self._windows[window] = size
            store = _LayerStore((*shape_kv, size, cfg.d_head), size, ring, self.dtype, devices[i], bits, group)
            self.layers.append(store)
        self._key_mask: Bool[Tensor, "batch max_len"] | None = None  # allocated on the first padding
        self._next_pos: Int[Tensor, " batch"] | None = None  # per-row position counters (with padding)
        self._counts: Tensor | int = 0
        self._pending: int | None = None

    @classmethod
    def for_model(
        cls, model, batch: int, max_len: int, kv_cache_dtype: str | None = None, spare: int = 0,
        int4_group: int = INT4_GROUP,
    ) -> KVCache:  # fmt: skip
        """A cache matching ``model``'s config, dtype and device (each layer's on its block's device)."""
        w = model.embed.weight
        layers = model.block_devices() if getattr(model, "placement", None) is not None else None
        return cls(
            model.cfg, batch, max_len, dtype=w.dtype, device=w.device, kv_cache_dtype=kv_cache_dtype,
            layer_devices=layers, spare=spare, int4_group=int4_group,
        )  # fmt: skip

    @property
    def nbytes(self) -> int:
        """Bytes held by the key/value buffers (and the int8 / int4 scales)."""
        return sum(getattr(s, n).nbytes for s in self.layers for n in s.tensors())

    def __repr__(self) -> str:
        kind = self.kv_cache_dtype or str(self.dtype).removeprefix("torch.")
        return (
            f"KVCache(batch={self.batch}, max_len={self.max_len}, offset={self.offset}, {kind}, "
            f"{self.nbytes / 2**20:.1f} MiB)"
        )

    # -- protocol -------------------------------------------------------------------------------------
    def prepare(
        self, attention_mask: Int[Tensor, "batch q"] | None, q_len: int
    ) -> tuple[int, Bool[Tensor, "batch k"] | None, Int[Tensor, "batch q"]]:
        """Reserve ``q_len`` positions; returns ``(q_offset, key_mask | None, positions)``."""
        off, b = self.offset, self.batch
        if off + q_len > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions; {off} are used and {q_len} more do not fit")
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (b, q_len):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected [batch={b}, q_len={q_len}]"
                )
            m = attention_mask.to(self.device, torch.bool)
            if self._key_mask is None and not bool(m.all()):
                self._key_mask = torch.ones(b, self.max_len, dtype=torch.bool, device=self.device)
                self._next_pos = torch.full((b,), off, dtype=torch.long, device=self.device)
        if self._key_mask is None:
            positions = torch.arange(off, off + q_len, device=self.device).expand(b, q_len)
            self._counts = q_len
        elif attention_mask is not None:
            self._key_mask[:, off : off + q_len] = m
            positions = (self._next_pos[:, None] + m.long().cumsum(-1) - 1).clamp_min(0)
            self._counts = m.sum(-1)
        else:
            self._key_mask[:, off : off + q_len] = True
            positions = self._next_pos[:, None] + torch.arange(q_len, device=self.device)
            self._counts = q_len
        self._pending = q_len
        self.key_positions = None
        if q_len == 1 and self._windows:
            self.key_positions = {  # slot s holds the latest position p <= off with p % size == s
                w: off - (off - torch.arange(n, device=self.device)) % n for w, n in self._windows.items() if off >= n
            } or None
        full = None if self._key_mask is None else self._key_mask[:, : off + q_len]
        return off, full, positions

    def update(
        self, layer: int, k: Float[Tensor, "batch q kv d_head"], v: Float[Tensor, "batch q kv d_head"]
    ) -> tuple[Float[Tensor, "batch k kv d_head"], Float[Tensor, "batch k kv d_head"]]:
        """Store this step's keys/values for ``layer`` and return the ones it attends to."""
        kh, vh = self.update_heads(layer, k.transpose(1, 2), v.transpose(1, 2))
        return kh.transpose(1, 2), vh.transpose(1, 2)

    def update_heads(
        self, layer: int, kt: Float[Tensor, "batch kv q d_head"], vt: Float[Tensor, "batch kv q d_head"]
    ) -> tuple[Float[Tensor, "batch kv k d_head"], Float[Tensor, "batch kv k d_head"]]:
        """:meth:`update` in the heads-first layout attention computes in (no transposes on the way)."""
        store, off = self.layers[layer], self.offset
        q = kt.shape[2]
        if not store.quantized and not store.ring:  # the common case, kept lean: copy in, return a view
            store.k.narrow(2, off, q).copy_(kt)
            store.v.narrow(2, off, q).copy_(vt)
            return store.k.narrow(2, 0, off + q), store.v.narrow(2, 0, off + q)
        if not store.ring:
            store.write(slice(off, off + q), kt, vt)
            k_old, v_old = store.read(slice(0, off))
            return torch.cat((k_old, kt), 2), torch.cat((v_old, vt), 2)
        w = store.size
        if q == 1:  # decode step: slots [0, off] in order until the ring wraps, then the whole ring
            slot = off % w
            store.write(slice(slot, slot + 1), kt, vt)
            k_all, v_all = store.read(slice(0, min(off + 1, w)))
            if store.quantized:  # the new token attends to its own key at full precision
                k_all[:, :, slot : slot + 1], v_all[:, :, slot : slot + 1] = kt, vt
            return k_all, v_all
        # several tokens: the window's earlier keys in position order, then the new ones
        prev = min(off, w - 1)
        if prev:
            k_old, v_old = store.read(torch.arange(off - prev, off, device=kt.device) % w)
            k_all, v_all = torch.cat((k_old, kt), 2), torch.cat((v_old, vt), 2)
        else:
            k_all, v_all = kt, vt
        keep = min(q, w)
        slots = torch.arange(off + q - keep, off + q, device=kt.device) % w
        store.write(slots, kt[:, :, q - keep :], vt[:, :, q - keep :])
        return k_all, v_all

    def advance(self, q_len: int) -> None:
        """Mark the ``q_len`` positions reserved by :meth:`prepare` as written."""
        if self._pending != q_len:
            raise ValueError(f"advance({q_len}) does not match the prepared step of {self._pending} tokens")
        self.offset += q_len
        if self._next_pos is not None:
            self._next_pos += self._counts
        self._pending, self.key_positions = None, None

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (speculative decoding's rollback of rejected tokens).

        Moves the offset and the per-row position counters back; nothing is copied and the buffers stay the
        same tensors (the next forward overwrites the forgotten slots). A ring buffer may have overwritten
        older keys with the forgotten ones, so it can roll back at most ``spare + 1`` positions while every
        key inside its window survives; more raises ``ValueError``.

        >>> cache = KVCache.for_model(model, batch=1, max_len=32, spare=4)
        >>> logits = model(tokens[:, :10], past_kv_cache=cache)      # offset 10
        >>> cache.truncate(7)                                         # as if only 7 had been run
        """
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= self.offset:
            raise ValueError(f"truncate length must be an int in [0, offset={self.offset}], got {length!r}")
        if self._pending is not None:
            raise ValueError("truncate between forwards only (a prepared step has not advanced yet)")
        back = self.offset - length
        if back > self.spare + 1 and self._windows and self.offset > min(self._windows.values()):
            raise ValueError(
                f"a ring buffer with {self.spare} spare slots can roll back at most {self.spare + 1} positions, "
                f"not {back}; allocate the cache with spare >= {back - 1}"
            )
        if self._next_pos is not None:
            self._next_pos -= self._key_mask[:, length : self.offset].sum(-1)
        self.offset = length

    def reset(self) -> None:
        """Forget everything written (the buffers are kept and overwritten): the next forward is a prefill.

        Generation refills the cache this way when the rotary tables of every position change with the
        sequence length (``longrope`` passing ``original_max_position_embeddings``).
        """
        self.offset, self._counts, self._pending = 0, 0, None
        self._key_mask, self._next_pos, self.key_positions = None, None, None

    # -- beam search ----------------------------------------------------------------------------------
    def reorder(self, index: Int[Tensor, " batch"]) -> None:
        """Keep rows ``index`` (beam search: each surviving beam takes its parent's cache).

        In place: the preallocated buffers stay the same tensors, and only the positions written so far
        (a ring buffer's filled slots) are gathered, so a step costs what the cache holds, not its size.
        """
        index = index.to(self.device)
        if torch.equal(index, torch.arange(self.batch, device=self.device)):
            return  # every row keeps its own cache
        for store in self.layers:
            used = min(self.offset, store.size)
            for name in store.tensors():
                buf = getattr(store, name).narrow(2, 0, used)
                buf.copy_(buf.index_select(0, index.to(buf.device)))
        if self._key_mask is not None:
            self._key_mask.copy_(self._key_mask.index_select(0, index))
            self._next_pos.copy_(self._next_pos.index_select(0, index))
