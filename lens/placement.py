"""Models larger than one device: blocks placed on several devices, or offloaded to CPU RAM or disk, via accelerate.

``HookedTransformer.from_pretrained(..., device_map=..., max_memory=..., offload_folder=..., n_devices=...)``
asks for a placement; this module checks the request (before any weight is read), plans it and loads into
it. The planning and the offload machinery are accelerate's (``infer_auto_device_map``,
``get_balanced_memory``, the offload folder's format read by ``OffloadedWeightsLoader``, and
``AlignDevicesHook``); lens adds its own rules:

* The placement units are the root's modules with weights (``embed``, ``pos_embed``, ``ln_final``,
  ``unembed``) and each block (``blocks.3``): a block is placed whole; a key inside one is refused.
* ``"cpu"`` and ``"disk"`` follow accelerate: with an accelerator in the map, ``"cpu"`` offloads a block to
  CPU RAM and it computes on the main device, as a ``"disk"`` block does (its weights are read from
  ``offload_folder`` per forward and dropped after it); without one, ``"cpu"`` blocks live and compute on the CPU.
  Only blocks are offloaded: the embedding, final norm and unembedding stay resident.
* The main device is the embedding's: inputs, masks, rotary tables and offloaded blocks compute there.
  The model moves the residual stream (and the per-forward attention context) to each block's device; the KV
  cache keeps each layer's keys on that layer's device.
* ``"auto"`` / ``"balanced"`` spread blocks evenly over the accelerators (``get_balanced_memory``),
  ``"sequential"`` fills them in order; then CPU RAM, then disk. The root's modules are placed first, so they
  always land on the main device, and accelerate keeps room there for the largest offloaded block.
* ``n_devices=N`` is TransformerLens's: blocks in ``N`` equal runs over ``cuda:0 .. cuda:N-1``, the embedding
  on the first device, the final norm and unembedding on the last (the first when tied to the embedding).

>>> request = check_request(device_map={"": "cpu"})          # doctest: +SKIP
>>> model = HookedTransformer.from_pretrained(                # doctest: +SKIP
...     "meta-llama/Llama-3.1-8B", device_map="auto", max_memory={0: "10GiB", "cpu": "30GiB"},
...     offload_folder="offload")
>>> model.placement.device_map["blocks.31"]                   # doctest: +SKIP
'cpu'
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lens.utils import release_freed_memory

__all__ = ["AUTO_MAPS", "DISK", "Placement", "PlacementRequest", "check_request", "empty_model", "plan", "place"]

DISK = "disk"
AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
BLOCK_CLASS = "TransformerBlock"  # accelerate never splits one
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)(\..+)?$")
_ACCELERATORS = ("cuda", "mps", "xpu")


def _accelerate():
    try:
        import accelerate  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "placing a model on several devices (device_map, max_memory, offload_folder, n_devices) uses "
            "accelerate: pip install accelerate (or lens[placement])"
        ) from e


# -- devices ------------------------------------------------------------------------------------------
def _count(kind: str) -> int:
    if kind == "cuda":
        return torch.cuda.device_count()
    if kind == "xpu":
        return torch.xpu.device_count() if hasattr(torch, "xpu") else 0
    return 1 if kind == "mps" and torch.backends.mps.is_available() else 0


def normalize_device(value: Any, what: str, disk: bool = True) -> str:
    """``value`` (an int GPU index, ``"cuda:1"``, ``torch.device``, ``"cpu"``, ``"disk"``) as a canonical name,
    ``ValueError`` for a device this machine lacks or a name that is no device.

    >>> normalize_device("cpu", "device_map['embed']")
    'cpu'
    """
    if isinstance(value, bool) or not isinstance(value, (int, str, torch.device)):
        raise TypeError(f"{what} must be a device name, GPU index or torch.device, got {type(value).__name__}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}={value}: a GPU index must be >= 0")
        value = f"cuda:{value}"
    name = str(value).strip().lower()
    if name == DISK:
        if not disk:
            raise ValueError(f"{what}='disk': only a device_map entry may be 'disk'")
        return DISK
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"{what}={value!r} is not a device; use 'cpu', 'cuda:N' (or the index N), 'mps', 'xpu:N' or 'disk'"
        ) from None
    if device.type == "cpu":
        return "cpu"
    if device.type not in _ACCELERATORS:
        raise ValueError(f"{what}={value!r}: lens places modules on 'cpu', 'cuda:N', 'mps', 'xpu:N' and 'disk'")
    index, count = device.index or 0, _count(device.type)
    if index >= count:
        raise ValueError(f"{what}={value!r}, but this machine has {count} {device.type} device(s)")
    return "mps" if device.type == "mps" else f"{device.type}:{index}"


def _accelerate_key(name: str) -> int | str:
    """accelerate's max_memory key for a canonical device name (GPU indices as ints)."""
    return int(name.split(":")[1]) if name.startswith(("cuda:", "xpu:")) else name


# -- the request ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlacementRequest:
    """Checked placement options: ``device_map`` (one of :data:`AUTO_MAPS` or ``{module: device}`` with
    canonical names), ``max_memory`` (``{device: bytes}``), ``offload_folder`` and ``n_devices``."""

    device_map: str | dict[str, str] | None = None
    max_memory: dict[str, int] | None = None
    offload_folder: Path | None = None
    n_devices: int | None = None
    first_device: str = "cuda:0"


def check_request(
    device: Any = None,
    device_map: Any = None,
    max_memory: Any = None,
    offload_folder: Any = None,
    n_devices: Any = None,
) -> tuple[PlacementRequest | None, Any]:
    """``(request or None, device)``: the placement asked for, checked before any file is read.

    ``device_map`` naming one device (``"cuda:0"``, ``0``, ``"cpu"``) is that ``device``; ``n_devices=1`` is no
    placement. Raises ``TypeError`` / ``ValueError`` naming the bad value and the limit.
    """
    if n_devices is not None:
        if isinstance(n_devices, bool) or not isinstance(n_devices, int):
            raise TypeError(f"n_devices must be a positive int, got {type(n_devices).__name__} ({n_devices!r})")
        if n_devices < 1:
            raise ValueError(f"n_devices must be >= 1, got {n_devices}")
        if device_map is not None:
            raise ValueError("pass either n_devices (TransformerLens's even split) or device_map, not both")
    if device_map is not None and device is not None:
        raise ValueError(f"pass either device={device!r} or device_map (which places every module), not both")
    if isinstance(device_map, (int, torch.device)) or (
        isinstance(device_map, str) and device_map.strip().lower() not in AUTO_MAPS
    ):
        if max_memory is not None or offload_folder is not None:
            raise ValueError(f"device_map={device_map!r} puts the whole model on one device; max_memory and "
                             "offload_folder apply to 'auto' and {module: device} maps")  # fmt: skip
        return None, normalize_device(device_map, "device_map")
    if device_map is not None and not isinstance(device_map, (str, dict)):
        raise TypeError(
            f"device_map must be {' / '.join(map(repr, AUTO_MAPS))}, a device, or a dict {{module name: device}}, "
            f"got {type(device_map).__name__}"
        )
    memory = _check_memory(max_memory)
    if isinstance(device_map, dict):
        if not device_map:
            raise ValueError("device_map is an empty dict; it must place every module (e.g. {'': 'cuda:0'})")
        if memory is not None:
            raise ValueError("max_memory sizes the 'auto' maps; an explicit device_map would ignore it")
        for key in device_map:
            if not isinstance(key, str):
                raise TypeError(f"device_map keys are module names (str), got {key!r}")
        device_map = {key: normalize_device(v, f"device_map[{key!r}]") for key, v in device_map.items()}
    elif isinstance(device_map, str):
        device_map = device_map.strip().lower()
    elif memory is not None or offload_folder is not None:
        device_map = "auto"  # max_memory / offload_folder alone ask for an automatic map, as transformers does
    folder = _check_folder(offload_folder)
    first = "cuda:0"
    if n_devices is not None:
        first = "cuda:0" if device is None else normalize_device(device, "device")
        if n_devices == 1:
            return None, device
        kind, start = first.split(":")[0], int(first.split(":")[1]) if ":" in first else 0
        if kind not in ("cuda", "xpu") or start + n_devices > _count(kind):
            raise ValueError(
                f"n_devices={n_devices} from {first} needs {kind if kind != 'cpu' else 'cuda'} devices "
                f"{start}..{start + n_devices - 1}, but this machine has {_count('cuda' if kind == 'cpu' else kind)}"
            )
        if memory is not None:
            raise ValueError("max_memory sizes the 'auto' maps; n_devices splits blocks evenly and would ignore it")
    elif device_map is None:
        return None, device
    return PlacementRequest(device_map, memory, folder, n_devices, first), None


def _check_memory(max_memory: Any) -> dict[str, int] | None:
    if max_memory is None:
        return None
    if not isinstance(max_memory, dict) or not max_memory:
        raise TypeError(f"max_memory must be a non-empty dict {{device: bytes or '10GiB'}}, got {max_memory!r}")
    _accelerate()
    from accelerate.utils import convert_file_size_to_int

    out: dict[str, int] = {}
    for key, size in max_memory.items():
        name = normalize_device(key, f"max_memory key {key!r}", disk=False)
        if isinstance(size, bool) or not isinstance(size, (int, str)):
            raise TypeError(f"max_memory[{key!r}] must be bytes (int) or a size such as '10GiB', got {size!r}")
        try:
            out[name] = convert_file_size_to_int(size)
        except (ValueError, AttributeError):
            raise ValueError(
                f"max_memory[{key!r}]={size!r} is not a size; use bytes or e.g. '500MB', '10GiB'"
            ) from None
        if out[name] <= 0:
            raise ValueError(f"max_memory[{key!r}]={size!r} must be more than 0 bytes")
    return out


def _check_folder(folder: Any) -> Path | None:
    if folder is None:
        return None
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"offload_folder must be a directory path, got {type(folder).__name__}")
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".lens-write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"offload_folder={os.fspath(folder)!r} cannot be written: {e}") from None
    return path


# -- the plan -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Where each unit of a placed model lives and computes.

    Attributes:
        device_map: every unit (``embed``, ``blocks.0``, ..., ``unembed``) -> ``"cuda:0"`` / ``"cpu"`` / ``"disk"``.
        main: the embedding's device: inputs, masks, rotary tables and offloaded blocks compute there.
        output: the device of the final norm and unembedding (the logits').
        block_devices: where each block computes (``main`` for an offloaded one).
        offloaded: the blocks whose weights load per forward (from CPU RAM or ``offload_folder``).
        offload_folder: the folder of the disk-offloaded weights, or None.
    """

    device_map: dict[str, str]
    main: torch.device
    output: torch.device
    block_devices: tuple[torch.device, ...]
    offloaded: frozenset[int] = field(default_factory=frozenset)
    offload_folder: Path | None = None

    @property
    def devices(self) -> list[torch.device]:
        """The devices that compute, in block order."""
        return list(dict.fromkeys([self.main, *self.block_devices, self.output]))


def empty_model(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with its parameters on the meta device (no memory) and its buffers where they are made."""
    _accelerate()
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def _units(model: nn.Module) -> list[str]:
    """The placement units: the root's children holding parameters, then every block."""
    units = [n for n, m in model.named_children() if n != "blocks" and next(m.parameters(), None) is not None]
    return units + [f"blocks.{i}" for i in range(len(model.blocks))]


def _sizes(model: nn.Module, dtype: torch.dtype) -> dict[str, int]:
    from accelerate.utils import compute_module_sizes

    sizes = compute_module_sizes(model, dtype=dtype)
    return {unit: sizes.get(unit, 0) for unit in _units(model)}


def plan(model: nn.Module, request: PlacementRequest, dtype: torch.dtype) -> Placement:
    """The :class:`Placement` of ``model`` (built by :func:`empty_model`) for ``request``; ``ValueError`` for a
    map that leaves a unit unplaced, names a module the model lacks, splits a block, offloads a non-block
    module or needs an ``offload_folder`` it was not given, and for a ``max_memory`` too small for the root's
    modules plus the largest block."""
    _accelerate()
    units, n = _units(model), len(model.blocks)
    if request.n_devices is not None:
        mapping = _even_split(model, request)
    elif isinstance(request.device_map, dict):
        mapping = _resolve(model, request.device_map, units)
    else:
        mapping = _auto(model, request, dtype, units)
    gpus = [d for d in dict.fromkeys(mapping.values()) if d not in ("cpu", DISK)]
    main = mapping["embed"]
    for unit in units[: len(units) - n]:
        where = mapping[unit]
        if where == DISK or (where == "cpu" and gpus):
            raise ValueError(
                f"device_map places {unit!r} on {where!r}, which offloads it; only blocks are offloaded: put "
                f"{unit} on {'an accelerator (' + gpus[0] + ')' if gpus else 'the CPU'}"
            )
    for unit in ("pos_embed",):
        if unit in mapping and mapping[unit] != main:
            raise ValueError(f"{unit!r} must share the embedding's device {main!r}, got {mapping[unit]!r}")
    output = mapping["unembed"]
    if mapping.get("ln_final", output) != output:
        raise ValueError(f"'ln_final' and 'unembed' must share a device, got {mapping['ln_final']!r} and {output!r}")
    if model.cfg.tie_word_embeddings and output != main:
        raise ValueError(
            f"the unembedding is tied to the embedding, so both must be on {main!r}; device_map puts it on {output!r}"
        )
    offloaded = {i for i in range(n) if mapping[f"blocks.{i}"] == DISK or (mapping[f"blocks.{i}"] == "cpu" and gpus)}
    on_disk = [f"blocks.{i}" for i in range(n) if mapping[f"blocks.{i}"] == DISK]
    if on_disk and request.offload_folder is None:
        raise ValueError(
            f"device_map places {_span(on_disk)} on 'disk'; pass offload_folder=... (a writable directory) for "
            "their weights"
        )
    block_devices = tuple(
        torch.device(main if i in offloaded else mapping[f"blocks.{i}"]) for i in range(n)
    )  # fmt: skip
    return Placement(
        mapping, torch.device(main), torch.device(output), block_devices, frozenset(offloaded),
        request.offload_folder if on_disk else None,
    )  # fmt: skip


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} blocks)"


def _resolve(model: nn.Module, device_map: dict[str, str], units: list[str]) -> dict[str, str]:
    """Every unit's device by the longest key of ``device_map`` that is it or contains it."""
    modules = dict(model.named_modules())
    for key in device_map:
        block = _BLOCK_KEY.match(key)
        if block and block.group(2):
            raise ValueError(
                f"device_map key {key!r} splits block {block.group(1)}; blocks are placed whole: use "
                f"'blocks.{block.group(1)}'"
            )
        if key != "" and key not in modules:
            raise ValueError(
                f"device_map names {key!r}, which is not a module of this model; its units are "
                f"{', '.join(units[: len(units) - len(model.blocks)])}, 'blocks' and blocks.0 .. "
                f"blocks.{len(model.blocks) - 1} ('' for everything)"
            )
    mapping, unplaced = {}, []
    for unit in units:
        keys = [k for k in device_map if k == "" or unit == k or unit.startswith(k + ".")]
        if keys:
            mapping[unit] = device_map[max(keys, key=len)]
        else:
            unplaced.append(unit)
    if unplaced:
        raise ValueError(f"device_map leaves {unplaced[:6]}{' ...' if len(unplaced) > 6 else ''} unplaced; "
                         "map every module (a '' key places the rest)")  # fmt: skip
    return mapping


def _even_split(model: nn.Module, request: PlacementRequest) -> dict[str, str]:
    kind, start = request.first_device.split(":")[0], int(request.first_device.split(":")[1])
    n, k = len(model.blocks), request.n_devices
    per = math.ceil(n / k)
    devices = [f"{kind}:{start + d}" for d in range(k)]
    mapping = {f"blocks.{i}": devices[i // per] for i in range(n)}
    last = mapping[f"blocks.{n - 1}"] if n else devices[0]
    top = {u: devices[0] for u in _units(model) if not u.startswith("blocks.")}
    if not model.cfg.tie_word_embeddings:
        top.update({u: last for u in ("ln_final", "unembed") if u in top})
    return {**top, **mapping}


def _auto(model: nn.Module, request: PlacementRequest, dtype: torch.dtype, units: list[str]) -> dict[str, str]:
    from accelerate.utils import get_balanced_memory, get_max_memory, infer_auto_device_map

    if request.max_memory is not None:
        memory = {_accelerate_key(k): v for k, v in request.max_memory.items()}
    else:
        memory = get_max_memory()
    tied = bool(model.cfg.tie_word_embeddings)  # the unembedding is the embedding's tensor: it goes where that goes
    ordered = _RootFirst(model, skip=("unembed",) if tied else ())
    gpus = [k for k in memory if isinstance(k, int) or k == "mps"]
    if request.device_map != "sequential" and len(gpus) > 1:
        memory = get_balanced_memory(
            ordered, memory, no_split_module_classes=[BLOCK_CLASS], dtype=dtype,
            low_zero=request.device_map == "balanced_low_0",
        )  # fmt: skip
    sizes = _sizes(model, dtype)
    root = sum(v for u, v in sizes.items() if not u.startswith("blocks."))
    largest = max((v for u, v in sizes.items() if u.startswith("blocks.")), default=0)
    main = gpus[0] if gpus else "cpu"
    if main not in memory:
        raise ValueError(f"max_memory={request.max_memory} gives no device to compute on; add 'cpu' or a GPU")
    if memory[main] < root + largest:
        raise ValueError(
            f"max_memory[{main!r}]={memory[main]} bytes is too small: the embedding, final norm and unembedding "
            f"({root} bytes) and the largest block ({largest} bytes) must fit there together ({root + largest} bytes)"
        )
    found = infer_auto_device_map(ordered, max_memory=memory, no_split_module_classes=[BLOCK_CLASS], dtype=dtype)
    named = {k: (f"cuda:{v}" if isinstance(v, int) else str(v)) for k, v in found.items()}
    if tied:
        named["unembed"] = named.get("embed", named.get("", main))
    return _resolve(model, named, units)


class _RootFirst(nn.Module):
    """The model's modules with the root's own first, so accelerate places them before any block (on the main
    device) and offloads blocks, never the embedding or unembedding. Shares the model's parameters; ``skip``
    leaves out a module whose only parameter is another's (a tied unembedding), which accelerate cannot size."""

    def __init__(self, model: nn.Module, skip: tuple[str, ...] = ()):
        super().__init__()
        for name, child in model.named_children():
            if name != "blocks" and name not in skip:
                self.add_module(name, child)
        self.add_module("blocks", model.blocks)


# -- loading into a placement ------------------------------------------------------------------------------
def _memory_order(param: Tensor) -> tuple[int, ...]:
    """The dimension order in which ``param`` is laid out in memory (outermost first): ``param.permute(order)``
    is contiguous. Components pick kernels by layout (a transposed weight), so an offloaded weight must come
    back with its parameter's strides, not as a contiguous copy."""
    return tuple(sorted(range(param.ndim), key=lambda d: (-param.stride(d), d)))


class _Laid(Mapping):
    """Offloaded weights (stored contiguously in memory order) seen in their parameters' layout."""

    def __init__(self, stored: Mapping, orders: dict[str, tuple[int, ...]]):
        self.stored, self.orders = stored, orders

    def __getitem__(self, key: str) -> Tensor:
        value, order = self.stored[key], self.orders.get(key)
        return value if order is None else value.permute(*sorted(range(len(order)), key=order.__getitem__))

    def __iter__(self):
        return iter(self.stored)

    def __len__(self) -> int:
        return len(self.stored)


class _Store:
    """Where offloaded weights go while loading: CPU RAM (a dict) or ``offload_folder`` (accelerate's files),
    each in its parameter's memory order."""

    def __init__(self, folder: Path | None):
        self.folder, self.ram, self.index, self.written, self.orders = folder, {}, {}, [], {}

    def put(self, name: str, param: Tensor, value: Tensor, to_disk: bool) -> None:
        order = _memory_order(param)
        if order != tuple(range(param.ndim)):
            self.orders[name] = order
        if hasattr(value, "dim") and not isinstance(value, Tensor):  # loading.RowChunks: a tensor a slice at a time
            if to_disk and order[0] == value.dim:  # the slices are consecutive runs of the file
                self.written.append(self.folder / f"{name}.dat")
                self.index[name] = _write_dat_chunks(self.folder / f"{name}.dat", value, order)
                return
            whole = torch.empty(value.shape, dtype=param.dtype)
            for start, chunk in value:
                whole.narrow(value.dim, start, chunk.shape[value.dim]).copy_(chunk)
            value = whole
        value = value.detach().to(param.dtype).permute(*order)
        if to_disk:
            self.written.append(self.folder / f"{name}.dat")
            self.index[name] = _write_dat(self.folder / f"{name}.dat", value.contiguous())
        else:
            self.ram[name] = value.to("cpu", copy=True).contiguous()

    def put_and_release(self, name: str, param: Tensor, value, to_disk: bool) -> None:
        """:meth:`put`, then hand the freed transients back to the operating system
        (:func:`lens.utils.release_freed_memory`)."""
        self.put(name, param, value, to_disk)
        del value
        release_freed_memory()

    def loader(self) -> Mapping:
        from accelerate.utils import OffloadedWeightsLoader, save_offload_index

        if self.index:
            save_offload_index(self.index, str(self.folder))
            self.written.append(self.folder / "index.json")
        stored = OffloadedWeightsLoader(
            state_dict=self.ram, save_folder=str(self.folder) if self.index else None, index=self.index or None
        )
        return _Laid(stored, self.orders)

    def discard(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)


def _write_dat(path: Path, value: Tensor) -> dict:
    """Write ``value`` as accelerate's offload format reads it (raw bytes in ``<name>.dat``; bf16 and fp8 as
    same-width integers) and return its index entry. A plain buffered write, not a memory map: the written
    pages are not counted as this process's resident memory while loading."""
    with open(path, "wb") as f:
        kind = _write_raw(f, value)
    return {"dtype": kind, "shape": list(value.shape)}


def _write_dat_chunks(path: Path, chunks, order: tuple[int, ...]) -> dict:
    """:func:`_write_dat` for a tensor given as ``loading.RowChunks`` whose slices, permuted to ``order``,
    are consecutive runs of the file (``order[0]`` is the slicing dimension)."""
    kind = None
    with open(path, "wb") as f:
        for _, chunk in chunks:
            kind = _write_raw(f, chunk.permute(*order).contiguous())
    return {"dtype": kind, "shape": [chunks.shape[d] for d in order]}


def _write_raw(f, value: Tensor) -> str:
    """Append ``value``'s bytes (contiguous) to ``f``; return accelerate's name for its dtype."""
    kind = str(value.dtype).removeprefix("torch.")
    if value.dtype == torch.bfloat16:
        value = value.view(torch.int16)
    elif kind.startswith("float8_"):
        value = value.view(torch.int8)
    else:
        kind = None
    array = value.cpu().numpy()
    f.write(memoryview(array.reshape(-1) if array.ndim else array.reshape(1)).cast("B"))
    return kind or str(array.dtype)


def _materialize(module: nn.Module, device: torch.device) -> None:
    """Give ``module``'s meta parameters empty storage on ``device``; move its buffers there."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_meta:
                # empty_strided, not empty_like: empty_like from a meta tensor touches part of the new storage
                empty = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device=device)
                sub._parameters[name] = nn.Parameter(empty, requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = b.to(device)


def place(model: nn.Module, placement: Placement, fill: Callable[[Callable[[str, Tensor, Tensor], None]], None]):
    """Load ``model`` (from :func:`empty_model`) into ``placement``: resident units get storage on their
    device, ``fill(put)`` streams the weights (``put(name, param, value)`` copies into a resident parameter or
    sends an offloaded block's weight to its store, one tensor at a time), then accelerate's
    ``AlignDevicesHook`` loads each offloaded block's weights for its forward. On any error the files written
    to ``offload_folder`` are removed and the error propagates (no half-placed model is returned)."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module
    from accelerate.utils import PrefixedDataset, find_tied_parameters, retie_parameters

    tied = find_tied_parameters(model)
    n = len(model.blocks)
    for unit in _units(model):
        if not unit.startswith("blocks."):
            _materialize(model.get_submodule(unit), torch.device(placement.device_map[unit]))
    for name, child in model.named_children():  # parameter-free root modules (rotary tables): the main device
        if name != "blocks" and name not in placement.device_map:
            _materialize(child, placement.main)
    for i in range(n):
        if i not in placement.offloaded:
            _materialize(model.blocks[i], placement.block_devices[i])
    retie_parameters(model, tied)
    store = _Store(placement.offload_folder)

    def put(name: str, param: Tensor, value: Tensor) -> None:
        if not param.is_meta:
            param.copy_(value)
            return
        block = int(name.split(".")[1])
        store.put_and_release(name, param, value, placement.device_map[f"blocks.{block}"] == DISK)

    try:
        fill(put)
        weights = store.loader() if placement.offloaded else None
        for i in sorted(placement.offloaded):  # the hook also moves the block's buffers to the main device
            hook = AlignDevicesHook(
                execution_device=placement.main, offload=True, weights_map=PrefixedDataset(weights, f"blocks.{i}."),
                place_submodules=True,
            )  # fmt: skip
            add_hook_to_module(model.blocks[i], hook)
            # after the hook has dropped the block's weights again: give their memory back
            model.blocks[i].register_forward_hook(lambda *_: release_freed_memory())
    except BaseException:
        store.discard()
        raise
    model.placement = placement
    return model
