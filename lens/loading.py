"""Load Hugging Face-format checkpoints from local disk into a :class:`lens.HookedTransformer`.

The one place that turns a Hugging Face config or model into a lens model: :func:`from_pretrained`
(directories and model objects, with the context policy, tokenizer and optional weight processing) and
:func:`from_hf_model` (a model object as its adapter reads it) share the same config, reader and fill
steps. The per-family mappings they apply live in :mod:`lens.families`. This module sits below
:mod:`lens.model`: callers pass the class to build (``HookedTransformer.from_pretrained`` passes itself;
``lens.adapters.from_hf_model`` passes ``HookedTransformer``).

``source`` is a local directory (``config.json`` plus ``model.safetensors``, a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin`` as a fallback; ``tokenizer.json`` when present),
a hub name that :mod:`lens.hub` resolves to a snapshot directory in the Hugging Face cache (downloading
only the files read here, and only when the environment allows), or a ``transformers`` model object
already in memory. ``dtype="auto"`` (the default) follows the checkpoint (:func:`checkpoint_dtype`).

Tensors stream into a model built with ``init=False``: each safetensors tensor is memory-mapped,
copied into its parameter, then released (the file is reopened per tensor, so the mapping never pins
more than the tensors in flight); a tensor that changes dtype is converted in row chunks of at most
4 MiB. Peak memory stays close to the model's own size (benchmarks/bench_loading.py). Tensors reach
the adapters already in the model dtype, so e.g. Gemma's ``1 + w`` is computed in float32 when a
bf16 checkpoint loads as float32, as ``transformers`` does.

Long-context models load with ``n_ctx = min(n_ctx_trained, DEFAULT_MAX_CONTEXT)`` (see
:mod:`lens.config`); ``context_size_override`` picks any context up to the trained maximum.

>>> from lens import HookedTransformer
>>> model = HookedTransformer.from_pretrained(Path("ckpt/mistral-7b"), context_size_override=16384)  # doctest: +SKIP
>>> model = from_pretrained(Path("ckpt/pythia-70m"), model_class=HookedTransformer)  # doctest: +SKIP
>>> model = from_hf_model(GPT2LMHeadModel(GPT2Config()), model_class=HookedTransformer)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lens import hub, placement, provenance
from lens.config import DEFAULT_MAX_CONTEXT, TransformerConfig, resolve_dtype
from lens.families import find_adapter
from lens.families.base import Adapter, WeightSpec
from lens.processing import ProcessingFlags, process_weights
from lens.tl_methods import fill_missing_keys  # TransformerLens's loading function of that name
from lens.tokenizer import Tokenizer, choose_prepend_bos, tokenizer_files

__all__ = [
    "CheckpointReader",
    "apply_context",
    "checkpoint_dtype",
    "fill_missing_keys",
    "from_hf_model",
    "from_pretrained",
    "load_weights",
    "open_checkpoint",
    "read_hf_config",
]

SAFETENSORS, SAFETENSORS_INDEX = hub.SAFETENSORS, hub.SAFETENSORS_INDEX  # the file names lens reads
TORCH_BIN, TORCH_BIN_INDEX = hub.TORCH_BIN, hub.TORCH_BIN_INDEX


def from_pretrained(
    source: str | os.PathLike | Any,
    *,
    model_class: type,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    context_size_override: int | None = None,
    flags: ProcessingFlags | None = None,
    tokenizer: Any = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    device_map: Any = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    n_devices: int | None = None,
    default_prepend_bos: bool | None = None,
    **processing: bool,
):
    """A ``model_class`` (:class:`lens.HookedTransformer`) with the weights of a local checkpoint or
    ``transformers`` model; users call ``HookedTransformer.from_pretrained``, which passes itself.

    Args:
        source: a local Hugging Face-format directory, a hub name (``"org/name"``, or a TransformerLens
            name such as ``"gpt2-small"``: :data:`lens.hub.TL_ALIASES`) resolved through the Hugging Face
            cache by :func:`lens.hub.resolve` (downloaded only when neither ``local_files_only`` nor
            ``HF_HUB_OFFLINE`` forbids it), or a ``transformers`` model object. A ``Path`` is always a directory.
        dtype: parameter dtype (``"bf16"``, ``torch.float16``, ...). The default ``"auto"`` follows the
            checkpoint's ``config.json`` ``dtype`` / ``torch_dtype``, else the dtype of its first floating tensor,
            as ``transformers``' ``dtype="auto"``; model objects keep their own dtype. An explicit dtype wins.
        device: where parameters live (default CPU).
        context_size_override: the context ``cfg.n_ctx`` (positive int ``<= cfg.n_ctx_trained``);
            by default ``min(n_ctx_trained, DEFAULT_MAX_CONTEXT)``. Nothing is allocated per position.
        model_class: the class to build, called as ``model_class(cfg, tokenizer=..., init=False)``.
        tokenizer: a :class:`lens.tokenizer.Tokenizer` or a ``transformers`` fast tokenizer to attach instead
            of the checkpoint's (``model.set_tokenizer``); by default the ``tokenizer.json`` beside the weights
            (for a model object: in the directory or hub cache snapshot its ``name_or_path`` names).
        revision, cache_dir, local_files_only: for hub names only: the branch, tag or commit (default
            ``main``), the cache directory (default ``$HF_HUB_CACHE`` / ``$HF_HOME/hub``, read at call time),
            and ``True`` to never touch the network. ``revision`` with any other source raises ``ValueError``.
        device_map, max_memory, offload_folder, n_devices: a model larger than one device
            (:mod:`lens.placement`, through accelerate): ``device_map="auto"`` (``"balanced"``, ``"sequential"``)
            or ``{module: device}`` over ``embed``, ``blocks.N``, ``ln_final``, ``unembed`` (``"disk"`` offloads a
            block to ``offload_folder``; ``"cpu"`` with an accelerator in the map offloads it to CPU RAM);
            ``max_memory={0: "20GiB", "cpu": "60GiB"}`` sizes the automatic maps; ``n_devices=N`` splits the
            blocks evenly over N GPUs as TransformerLens. Everything is checked before weights are read.
        flags, **processing: opt-in weight processing (see :mod:`lens.processing`) as one
            :class:`~lens.processing.ProcessingFlags` or as the keywords ``fold_ln``,
            ``center_writing_weights``, ``center_unembed``, ``fold_value_biases`` (bools); off by
            default so logits equal Hugging Face's. A flag whose
            precondition the architecture breaks (``center_writing_weights`` without LayerNorm)
            raises ``ValueError`` before anything loads; ``fold_value_biases`` without value biases
            is a no-op.
        default_prepend_bos: whether ``to_tokens`` & co. prepend BOS by default (``cfg.default_prepend_bos``).
            None (the default) follows the tokenizer (:attr:`lens.tokenizer.Tokenizer.add_bos_token`: its
            ``add_bos_token`` setting or its post-processor), else the family's convention; a bool overrides both.

    The model's ``provenance`` (:mod:`lens.provenance`) records the source (directory and the files read, hub
    name with the resolved commit, or the model object's ``name_or_path``), the processing flags,
    ``context_size_override``, how ``default_prepend_bos`` was chosen, and the SHA-256 of the weights as loaded.

    Raises:
        FileNotFoundError: no such directory, a hub name neither cached nor downloadable (the message names the
            cache directory and the ``hf download`` command), or no config.json / weight files.
        ValueError: unsupported architecture, corrupt or mismatched checkpoint, bad dtype or context.
        TypeError: a source, dtype, context_size_override or hub option of the wrong type.

    >>> model = from_pretrained(Path("checkpoints/gpt2"), model_class=HookedTransformer, fold_ln=True)  # doctest: +SKIP
    """
    _check_override(context_size_override)
    flags = ProcessingFlags.resolve(flags, processing, "from_pretrained")
    if default_prepend_bos is not None and not isinstance(default_prepend_bos, bool):
        raise TypeError(
            f"default_prepend_bos must be a bool or None, got {type(default_prepend_bos).__name__} "
            f"({default_prepend_bos!r})"
        )
    hub.check_arguments(revision, cache_dir, local_files_only)
    request, device = placement.check_request(device, device_map, max_memory, offload_folder, n_devices)
    if dtype is not None and not _is_auto(dtype):
        dtype = resolve_dtype(dtype)
    requested_dtype = _dtype_name(dtype)
    if isinstance(source, str) and not Path(source).exists() and hub.is_hub_name(source):
        snapshot = hub.resolve(source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        model, files = _from_directory(
            snapshot, dtype, device, context_size_override, flags, model_class, request,
            model_name=hub.hub_name(source),
        )  # fmt: skip
        origin = dict(
            kind="hub", repo_id=hub.hub_name(source), requested=source, revision=revision, commit=snapshot.name,
            path=str(snapshot.absolute()), files=provenance.files_read(snapshot, files),
        )  # fmt: skip
    elif revision is not None:
        raise ValueError(f"revision={revision!r} selects a hub snapshot, but the source is not a hub name")
    elif isinstance(source, (str, os.PathLike)):
        model, files = _from_directory(
            Path(source), dtype, device, context_size_override, flags, model_class, request, given=os.fspath(source)
        )
        directory = Path(source).absolute()
        origin = dict(kind="directory", path=str(directory), files=provenance.files_read(directory, files))
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        model, tokenizer_dir = _from_model_object(
            source, dtype, device, context_size_override, flags, model_class, request
        )
        origin = _object_origin(source, tokenizer_dir)
    else:
        raise TypeError(
            f"source must be a local directory path or a transformers model object, got {type(source).__name__}"
        )
    if "tokenizer" not in origin:  # a directory or hub snapshot: its own tokenizer.json, if it has one
        origin["tokenizer"] = origin["path"] if model.tokenizer is not None else None
    family_bos = model.cfg.default_prepend_bos
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
        origin["tokenizer"] = "argument"
    process_weights(model, flags)
    return _settle(
        model, origin, family_bos, default_prepend_bos, processing=dataclasses.asdict(flags),
        context_size_override=context_size_override, dtype=requested_dtype,
    )  # fmt: skip


def from_hf_model(
    hf_model: Any,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    tokenizer: Any = None,
    *,
    model_class: type,
    **config_overrides: Any,
):
    """Convert a ``transformers`` model object into a ``model_class`` (:class:`lens.HookedTransformer`), same weights.

    The config is the adapter's reading of ``hf_model.config`` plus ``config_overrides`` (any
    :class:`~lens.config.TransformerConfig` field, e.g. ``n_ctx=8192``); unlike :func:`from_pretrained`
    no context override check, tokenizer lookup or weight processing. ``dtype`` defaults to the model's.
    ``cfg.default_prepend_bos`` follows ``tokenizer`` when given and it says, else the family's convention;
    ``default_prepend_bos=`` among the overrides wins. ``model.provenance`` records the object (as
    :func:`from_pretrained` does).

    >>> model = from_hf_model(hf_model, model_class=HookedTransformer, n_ctx=8192)  # doctest: +SKIP
    """
    if not hasattr(hf_model, "config") or not hasattr(hf_model, "state_dict"):
        raise TypeError(f"expected a transformers PreTrainedModel, got {type(hf_model).__name__}")
    adapter, hf = _object_adapter(hf_model)
    override = config_overrides.pop("default_prepend_bos", None)
    cfg = adapter.make_config(hf, dtype=_object_dtype(hf_model, dtype), device=device, **config_overrides)
    family_bos = cfg.default_prepend_bos
    model = _load_object(hf_model, adapter, cfg, model_class, None, tokenizer)
    origin = _object_origin(hf_model, None)
    if tokenizer is not None:
        origin["tokenizer"] = "argument"
    return _settle(
        model, origin, family_bos, override, processing=dataclasses.asdict(ProcessingFlags()),
        context_size_override=None, config_overrides={k: _plain(v) for k, v in config_overrides.items()},
        dtype=_dtype_name(dtype),
    )  # fmt: skip


def _settle(model, origin: dict[str, Any], family_bos: bool, override: bool | None, **fields: Any):
    """The last step of every load: choose ``cfg.default_prepend_bos`` (override, else the tokenizer, else the
    family's ``family_bos``) and record the model's provenance (``origin`` plus ``fields``); returns ``model``."""
    bos = choose_prepend_bos(model.tokenizer, family_bos, override)
    model.cfg.default_prepend_bos = bos["value"]
    origin = dict(origin)
    provenance.record(model, origin.pop("kind"), **origin, **fields, prepend_bos=bos)
    return model


def _dtype_name(dtype: str | torch.dtype | None) -> str:
    """The dtype as requested, for the provenance record: ``"auto"`` or e.g. ``"bfloat16"``."""
    return "auto" if dtype is None or _is_auto(dtype) else str(resolve_dtype(dtype)).removeprefix("torch.")


def _plain(value: Any) -> Any:
    """``value`` when JSON writes it as itself, else its ``str``."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


# -- context ------------------------------------------------------------------------------------------
def _check_override(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"context_size_override must be a positive int, got {type(value).__name__} ({value!r})")
    if value <= 0:
        raise ValueError(f"context_size_override must be a positive int, got {value}")


def apply_context(cfg: TransformerConfig, override: int | None = None) -> TransformerConfig:
    """``cfg`` with ``n_ctx = override`` (checked against ``n_ctx_trained``) or ``DEFAULT_MAX_CONTEXT``.

    >>> apply_context(TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_vocab=10, n_ctx=32768,
    ...                                 n_ctx_trained=32768)).n_ctx
    4096
    """
    _check_override(override)
    trained = cfg.n_ctx_trained or cfg.n_ctx
    if override is None:
        return cfg.replace(n_ctx=min(trained, DEFAULT_MAX_CONTEXT), n_ctx_trained=trained)
    if override > trained:
        raise ValueError(
            f"context_size_override={override} exceeds the model's trained maximum n_ctx_trained={trained}; "
            f"choose a context of at most {trained} positions"
        )
    return cfg.replace(n_ctx=override, n_ctx_trained=trained)


# -- configs ------------------------------------------------------------------------------------------
def read_hf_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face-format directory (clear errors when absent or broken)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no config.json; lens loads Hugging Face-format directories "
            f"(config.json + {SAFETENSORS} / {SAFETENSORS_INDEX} / {TORCH_BIN})"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _make_config(adapter: Adapter, hf: dict[str, Any], override: int | None, **fields: Any) -> TransformerConfig:
    try:
        cfg = adapter.make_config(hf, **fields)
    except KeyError as e:
        raise ValueError(f"the {adapter.name} config is missing the field {e.args[0]!r}") from e
    return apply_context(cfg, override)


# -- dtype ---------------------------------------------------------------------------------------------
def _is_auto(dtype: Any) -> bool:
    return isinstance(dtype, str) and dtype.strip().lower() == "auto"


def checkpoint_dtype(directory: str | os.PathLike, hf: dict[str, Any] | None = None) -> torch.dtype:
    """What ``dtype="auto"`` loads ``directory`` as, as ``transformers`` reads it: ``config.json``'s ``dtype``
    (``torch_dtype`` in older files; a composite config's ``text_config`` when the top level has none), else
    the dtype of the checkpoint's first floating tensor, else float32."""
    hf = read_hf_config(directory) if hf is None else hf
    for level in (hf, hf.get("text_config")):
        if not isinstance(level, dict):
            continue
        value = level.get("dtype") or level.get("torch_dtype")
        if value is None or _is_auto(value):
            continue
        try:
            return resolve_dtype(value)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{Path(directory) / 'config.json'} gives dtype {value!r}, not a floating dtype lens loads "
                "(pass dtype= explicitly)"
            ) from e
    reader = open_checkpoint(directory)
    try:
        return reader.stored_dtype() or torch.float32
    finally:
        reader.close()


# -- checkpoint readers -------------------------------------------------------------------------------
CHUNK_BYTES = 4 << 20
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class CheckpointReader:
    """Names of the tensors in a checkpoint and ``get(name)`` for one tensor at a time.

    Floating tensors come back in ``dtype`` (when given); others as stored.
    """

    names: list[str]
    dtype: torch.dtype | None = None
    files: tuple[Path, ...] = ()  # the files it reads (shard index included); empty for in-memory state dicts
    # True when ``shape(name)`` and ``rows(name, start, stop)`` read a tensor's header and a few of its rows
    # without mapping the rest (the loader then fills large parameters a chunk at a time)
    reads_rows: bool = False

    def get(self, name: str) -> Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Release anything held open (a no-op by default)."""

    def stored_dtype(self) -> torch.dtype | None:
        """The stored dtype of the first floating tensor (None when there is none)."""
        for name in self.names:
            dtype = self._stored(name)
            if dtype is not None and dtype.is_floating_point:
                return dtype
        return None

    def _stored(self, name: str) -> torch.dtype | None:
        return self.get(name).dtype if self.dtype is None else None

    def _convert(self, t: Tensor) -> Tensor:
        return t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t


class _SafetensorsReader(CheckpointReader):
    """Memory-mapped safetensors shards; each ``get`` maps its file only while the tensor is alive."""

    def __init__(self, files: list[Path], dtype: torch.dtype | None = None):
        from safetensors import safe_open

        self._open = safe_open
        self.dtype = dtype
        self._where: dict[str, Path] = {}
        for file in files:
            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    keys = list(f.keys())
            except Exception as e:  # SafetensorError, OSError: a truncated or corrupt file
                raise ValueError(f"{file} is not a readable safetensors file (truncated or corrupt?): {e}") from e
            for key in keys:
                self._where[key] = file
        self.names = list(self._where)

    def _stored(self, name: str) -> torch.dtype | None:
        with self._open(str(self._where[name]), framework="pt", device="cpu") as f:
            return _SAFETENSORS_DTYPES.get(f.get_slice(name).get_dtype())

    def get(self, name: str) -> Tensor:
        file = self._where[name]
        try:
            with self._open(str(file), framework="pt", device="cpu") as f:
                view = f.get_slice(name)
                shape, stored = list(view.get_shape()), _SAFETENSORS_DTYPES.get(view.get_dtype())
                if stored is None or self.dtype in (None, stored) or not shape:
                    return self._convert(f.get_tensor(name))
            return self._converted_in_chunks(file, name, shape, stored)
        except Exception as e:
            raise ValueError(f"could not read tensor {name!r} from {file}: {e}") from e

    reads_rows = True

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of ``name``, from the file's header."""
        with self._open(str(self._where[name]), framework="pt", device="cpu") as f:
            return tuple(f.get_slice(name).get_shape())

    def rows(self, name: str, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of ``name``, read alone (the file is mapped only for them)."""
        file = self._where[name]
        try:
            with self._open(str(file), framework="pt", device="cpu") as f:
                return self._convert(f.get_slice(name)[start:stop])
        except Exception as e:
            raise ValueError(f"could not read rows {start}:{stop} of tensor {name!r} from {file}: {e}") from e

    def _converted_in_chunks(self, file: Path, name: str, shape: list[int], stored: torch.dtype) -> Tensor:
        """Convert ``CHUNK_BYTES`` of rows at a time, remapping the file per chunk so pages are released."""
        out = torch.empty(shape, dtype=self.dtype)
        row_bytes = max(1, math.prod(shape[1:]) * stored.itemsize)
        step = max(1, CHUNK_BYTES // row_bytes)
        for start in range(0, shape[0], step):
            with self._open(str(file), framework="pt", device="cpu") as f:
                out[start : start + step].copy_(f.get_slice(name)[start : start + step])
        return out


class _TorchBinReader(CheckpointReader):
    """``pytorch_model.bin`` shards via ``torch.load(weights_only=True, mmap=True)``, one shard at a time."""

    def __init__(self, files: list[Path], names: dict[str, Path] | None = None, dtype: torch.dtype | None = None):
        self.dtype = dtype
        self._shard: tuple[Path, dict[str, Tensor]] | None = None
        if names is None:  # one file: its keys are the names
            names = dict.fromkeys(self._load(files[0]), files[0])
        self._where = names
        self.names = list(names)

    def _load(self, file: Path) -> dict[str, Tensor]:
        if self._shard is not None and self._shard[0] == file:
            return self._shard[1]
        self._shard = None
        try:
            try:
                sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                sd = torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except Exception as e:
            raise ValueError(f"{file} is not a loadable PyTorch state dict (weights_only=True): {e}") from e
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise ValueError(f"{file} does not hold a flat {{name: tensor}} state dict")
        self._shard = (file, sd)
        return sd

    def get(self, name: str) -> Tensor:
        sd = self._load(self._where[name])
        if name not in sd:
            raise ValueError(f"the index places {name!r} in {self._where[name]}, but that file lacks it")
        return self._convert(sd[name])

    def close(self) -> None:
        self._shard = None


class _StateDictReader(CheckpointReader):
    def __init__(self, state_dict: dict[str, Tensor], dtype: torch.dtype | None = None):
        self._sd, self.dtype = state_dict, dtype
        self.names = list(state_dict)

    def get(self, name: str) -> Tensor:
        return self._convert(self._sd[name])


def _index(directory: Path, index_name: str) -> dict[str, Path]:
    path = directory / index_name
    where = {name: directory / file for name, file in hub.read_shard_index(path).items()}
    missing = sorted({str(f.name) for f in where.values() if not f.is_file()})
    if missing:
        raise FileNotFoundError(f"{path} lists shard files that are not in {directory}: {missing[:5]}")
    return where


def open_checkpoint(directory: str | os.PathLike, dtype: torch.dtype | None = None) -> CheckpointReader:
    """A reader for the weights in ``directory``: safetensors (single or sharded), else pytorch_model.bin.

    >>> reader = open_checkpoint("checkpoints/gpt2", torch.float32)   # doctest: +SKIP
    >>> reader.get("transformer.wte.weight").shape                      # doctest: +SKIP
    torch.Size([50257, 768])
    """
    directory = Path(directory)
    reader: CheckpointReader
    if (directory / SAFETENSORS).is_file():
        reader = _SafetensorsReader([directory / SAFETENSORS], dtype)
        reader.files = (directory / SAFETENSORS,)
        return reader
    if (directory / SAFETENSORS_INDEX).is_file():
        shards = sorted(set(_index(directory, SAFETENSORS_INDEX).values()))
        reader = _SafetensorsReader(shards, dtype)
        reader.files = (directory / SAFETENSORS_INDEX, *shards)
        return reader
    if (directory / TORCH_BIN).is_file():
        reader = _TorchBinReader([directory / TORCH_BIN], dtype=dtype)
        reader.files = (directory / TORCH_BIN,)
        return reader
    if (directory / TORCH_BIN_INDEX).is_file():
        where = _index(directory, TORCH_BIN_INDEX)
        reader = _TorchBinReader(sorted(set(where.values())), where, dtype)
        reader.files = (directory / TORCH_BIN_INDEX, *sorted(set(where.values())))
        return reader
    raise FileNotFoundError(
        f"no weights in {directory}: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {TORCH_BIN} or {TORCH_BIN_INDEX}"
    )


def _first(names: Iterable[str], n: int = 5) -> str:
    names = sorted(names)
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return f"{names[:n]}{more}"


@torch.no_grad()
def load_weights(
    model: torch.nn.Module,
    specs: dict[str, WeightSpec],
    get: Callable[[str], Tensor],
    available: Iterable[str],
    ignore: tuple[str, ...] = (),
    put: Callable[[str, Tensor, Tensor], None] | None = None,
    rows: Callable[[str], tuple[tuple[int, ...], Callable[[int, int], Tensor]] | None] | None = None,
) -> None:
    """Fill ``model``'s parameters from checkpoint tensors, one at a time (no second full copy).

    A parameter with storage is filled in place (``parameter.copy_(value)``); one without (on the meta
    device: a block a placed load offloads) is handed to ``put(name, parameter, value)``, which
    :func:`lens.placement.place` uses to send it to its store. ``rows(source)`` may give ``(shape, fetch)``
    with ``fetch(start, stop)`` reading only those rows: a large tensor whose spec maps rows one to one
    (``WeightSpec.rows_to``) is then copied ``CHUNK_BYTES`` at a time, so the loading peak is the model plus a
    chunk, not the model plus its largest tensor.

    Raises ``ValueError`` naming the first few missing or unexpected checkpoint tensors, the tensor whose
    shape does not match the config, or one that is not floating point for a float weight, before or instead
    of returning a half-filled model.
    """
    params = dict(model.named_parameters())
    no_spec = set(params) - set(specs)
    if no_spec:
        raise ValueError(f"adapter gives no source for lens parameters {_first(no_spec)}")
    available = set(available)
    needed = {s for spec in specs.values() for s in spec.sources}
    missing = needed - available
    if missing:
        raise ValueError(f"checkpoint is missing tensors {_first(missing)}")
    unexpected = {n for n in available - needed if not n.endswith(ignore)}
    if unexpected:
        raise ValueError(f"checkpoint has unexpected tensors {_first(unexpected)}")
    for name, spec in specs.items():
        if name not in params:
            continue
        p = params[name]
        chunked = _chunked_source(spec, p, rows, offloaded=put is not None and p.is_meta)
        if chunked is not None:
            chunks = RowChunks(name, spec, p, *chunked)
            if p.is_meta:
                put(name, p, chunks)
            else:
                for start, chunk in chunks:
                    p.narrow(spec.rows_to, start, chunk.shape[spec.rows_to]).copy_(chunk)
            continue
        raw = [get(s) for s in spec.sources]
        if p.is_floating_point():
            for source, t in zip(spec.sources, raw, strict=True):
                if not t.is_floating_point():
                    raise ValueError(
                        f"checkpoint tensor {source!r} has dtype {t.dtype}, but {name} is a {p.dtype} weight; "
                        "an integer or bool tensor would be converted silently (a corrupt or quantised checkpoint?)"
                    )
        value = spec.combine(raw)
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(
                f"checkpoint tensor(s) {list(spec.sources)} ({spec.describe}) have shape {tuple(value.shape)}, "
                f"but the config needs {tuple(p.shape)} for {name}"
            )
        if put is None or not p.is_meta:
            p.copy_(value)  # copy_ converts dtype and device without a temporary
        else:
            put(name, p, value)


def _chunked_source(spec: WeightSpec, p: Tensor, rows, offloaded: bool) -> tuple[tuple[int, ...], Callable] | None:
    """``(shape, fetch)`` when ``p`` should be filled a few rows at a time: a row-wise spec, a parameter with
    storage to copy into (or one sent to an offload store), and a source bigger than a few chunks."""
    if spec.rows_to is None or rows is None or (p.is_meta and not offloaded) or len(spec.sources) != 1:
        return None
    found = rows(spec.sources[0])
    if found is None or not found[0] or math.prod(found[0]) * p.element_size() <= CHUNK_BYTES:
        return None
    return found


class RowChunks:
    """A parameter's value read ``CHUNK_BYTES`` of source rows at a time: iterating gives ``(start, chunk)``,
    ``chunk`` being the parameter's slice ``start:start + len`` along dimension ``dim`` (the spec's
    ``rows_to``), already combined (transposed, offset) and in the parameter's dtype. An offload store takes
    one of these instead of a whole tensor and writes it through, so a large tensor never sits in memory whole.

    Raises ``ValueError`` when the source's shape, combined, is not the parameter's, or when it is not floating
    point for a float weight (as :func:`load_weights` does for whole tensors)."""

    def __init__(self, name: str, spec: WeightSpec, p: Tensor, shape: tuple[int, ...], fetch: Callable):
        full = tuple(spec.combine([torch.empty(shape, device="meta")]).shape)
        if full != tuple(p.shape):
            raise ValueError(
                f"checkpoint tensor(s) {list(spec.sources)} ({spec.describe}) have shape {full}, "
                f"but the config needs {tuple(p.shape)} for {name}"
            )
        self.name, self.spec, self.dtype, self.shape, self.dim = name, spec, p.dtype, full, spec.rows_to
        self._rows, self._fetch, self._float = shape, fetch, p.is_floating_point()

    def __iter__(self):
        step = max(
            1, CHUNK_BYTES // max(1, math.prod(self._rows[1:]) * torch.empty((), dtype=self.dtype).element_size())
        )
        for start in range(0, self._rows[0], step):
            chunk = self._fetch(start, min(start + step, self._rows[0]))
            if self._float and not chunk.is_floating_point():
                raise ValueError(
                    f"checkpoint tensor {self.spec.sources[0]!r} has dtype {chunk.dtype}, but {self.name} is a "
                    f"{self.dtype} weight; an integer or bool tensor would be converted silently (a corrupt or "
                    "quantised checkpoint?)"
                )
            yield start, self.spec.combine([chunk]).to(self.dtype)


def _fill(model, adapter: Adapter, reader: CheckpointReader, put=None) -> None:
    names = adapter.source_names(reader.names)
    parts: dict[str, tuple[str, Callable[[Tensor], Tensor]]] = {}  # unpacked name -> (fused tensor, slice)
    if adapter.unpack is not None:
        for canonical, actual in list(names.items()):
            for part, take in adapter.unpack(canonical, model.cfg).items():
                parts[part] = (actual, take)
                names.pop(canonical, None)
    last: list = [None, None]  # the fused tensor read last: its slices are asked for one after another

    def get(name: str) -> Tensor:
        if name not in parts:
            return reader.get(names[name])
        actual, take = parts[name]
        if last[0] != actual:
            last[:] = [actual, reader.get(actual)]
        return take(last[1])

    def rows(name: str):
        if name in parts or not reader.reads_rows:
            return None
        return reader.shape(names[name]), lambda start, stop: reader.rows(names[name], start, stop)

    try:
        load_weights(
            model, adapter.weights(model.cfg), get, [*names, *parts], adapter.ignored(model.cfg), put, rows
        )  # fmt: skip
    finally:
        reader.close()


# -- sources ------------------------------------------------------------------------------------------
def _not_a_directory(path: Path, given: str | None = None) -> Exception:
    """The error for a source that is not a directory; ``given`` is the name as the caller wrote it
    (``Path`` folds ``hf://gpt2`` into ``hf:/gpt2``, so messages quote the original)."""
    name = str(path) if given is None else given
    if path.exists():
        return ValueError(f"{name!r} is a file; pass the directory that holds config.json and the weights")
    return FileNotFoundError(
        f"{name!r} is not a local directory (nor, as a str, a hub name 'org/name'); pass the directory that holds "
        "config.json and the weights, a hub name (e.g. 'EleutherAI/pythia-70m'), or a transformers model object"
    )


def _from_directory(
    directory: Path,
    dtype,
    device,
    override,
    flags: ProcessingFlags,
    model_class,
    request=None,
    given=None,
    model_name=None,
):
    if not directory.is_dir():
        raise _not_a_directory(directory, given)
    hf = read_hf_config(directory)
    adapter = find_adapter(hf)
    name = model_name or (None if hf.get("_name_or_path") else directory.name)
    if dtype is None or _is_auto(dtype):
        dtype = checkpoint_dtype(directory, hf)
    cfg = _make_config(adapter, hf, override, dtype=dtype, device=device, model_name=name)
    flags.check(cfg)
    tokenizer = None
    files = [directory / "config.json"]
    if (directory / "tokenizer.json").is_file():
        try:
            tokenizer = Tokenizer.from_directory(directory)
        except Exception as e:
            raise ValueError(f"could not load {directory / 'tokenizer.json'}: {e}") from e
        files += tokenizer_files(directory)
    reader = open_checkpoint(directory, cfg.dtype) if request is None else None  # placed: after the plan

    def fill(model, put):
        opened = reader or open_checkpoint(directory, cfg.dtype)
        files.extend(opened.files)
        _fill(model, adapter, opened, put)

    return _build(model_class, cfg, tokenizer, request, flags, fill), files


def _build(model_class, cfg: TransformerConfig, tokenizer, request, flags: ProcessingFlags, fill):
    """``model_class(cfg)`` filled by ``fill(model, put)``: on ``cfg.device``, or (``request``) planned by
    :mod:`lens.placement` on the meta model first, so a bad map fails before any weight is read."""
    if request is None:
        model = model_class(cfg, tokenizer=tokenizer, init=False)
        fill(model, None)
        return model
    model = placement.empty_model(lambda: model_class(cfg, tokenizer=tokenizer, init=False))
    model.tie_weights()  # accelerate's empty construction gives a tied parameter a tensor of its own
    where = placement.plan(model, request, cfg.dtype)
    if where.offloaded and flags.requested:
        raise ValueError(
            f"{', '.join(flags.requested)} rewrite every block's weights in memory, but this placement offloads "
            f"{len(where.offloaded)} block(s); load without offloading, or without weight processing"
        )
    return placement.place(model, where, lambda put: fill(model, put))


def _from_model_object(hf_model, dtype, device, override, flags: ProcessingFlags, model_class, request=None):
    adapter, hf = _object_adapter(hf_model)
    cfg = _make_config(adapter, hf, override, dtype=_object_dtype(hf_model, dtype), device=device)
    flags.check(cfg)
    model = _load_object(hf_model, adapter, cfg, model_class, request, flags=flags)
    tokenizer_dir = None
    if model.tokenizer is None:
        revision = getattr(getattr(hf_model, "config", None), "_commit_hash", None)
        tokenizer_dir = _attach_local_tokenizer(model, getattr(hf_model, "name_or_path", None), revision)
    return model, tokenizer_dir


def _object_origin(hf_model, tokenizer_dir: Path | None) -> dict[str, Any]:
    """The provenance fields of a ``transformers`` model object (see :mod:`lens.provenance`)."""
    try:
        import transformers

        version = transformers.__version__
    except ImportError:  # a duck-typed object without transformers installed
        version = None
    name = getattr(hf_model, "name_or_path", None) or getattr(getattr(hf_model, "config", None), "_name_or_path", None)
    return dict(
        kind="transformers_object",
        name_or_path=str(name) if name else None,  # None: an object never saved or loaded (nothing to point at)
        commit=getattr(getattr(hf_model, "config", None), "_commit_hash", None),
        **{"class": type(hf_model).__name__},
        transformers=version,
        tokenizer=None if tokenizer_dir is None else str(Path(tokenizer_dir).absolute()),
    )


def _object_adapter(hf_model) -> tuple[Adapter, dict[str, Any]]:
    config = hf_model.config
    hf = config if isinstance(config, dict) else config.to_dict()
    return find_adapter(hf), hf


def _object_dtype(hf_model, dtype: str | torch.dtype | None) -> torch.dtype:
    """``dtype``, or (None, ``"auto"``) the model object's own parameter dtype."""
    if dtype is not None and not _is_auto(dtype):
        return resolve_dtype(dtype)
    return next(_params(hf_model), torch.empty(0)).dtype


def _load_object(
    hf_model,
    adapter: Adapter,
    cfg: TransformerConfig,
    model_class,
    request=None,
    tokenizer: Any = None,
    flags: ProcessingFlags | None = None,
):
    state = hf_model.state_dict()
    return _build(
        model_class, cfg, tokenizer, request, flags or ProcessingFlags(),
        lambda model, put: _fill(model, adapter, _StateDictReader(state, cfg.dtype), put),
    )  # fmt: skip


def _params(module) -> Iterator[Tensor]:
    return iter(module.parameters()) if hasattr(module, "parameters") else iter(())


def _tokenizer_directory(path: Any, revision: str | None = None) -> Path | None:
    """The directory holding the ``tokenizer.json`` of a model object's ``name_or_path``: the local directory,
    or for a hub name its snapshot in the Hugging Face cache (at ``revision``, the config's commit, when that is
    cached). Never the network; None when there is none (or ``huggingface_hub`` is missing)."""
    if not path or not isinstance(path, (str, os.PathLike)):
        return None
    local = Path(path)
    if (local / "tokenizer.json").is_file():
        return local
    if local.exists() or not isinstance(path, str):
        return None
    try:
        from lens.hub import cached_snapshot, hub_name, is_hub_name
    except ImportError:  # lens.hub is newer than this code path: ask huggingface_hub directly
        cached_snapshot = None
    try:
        if cached_snapshot is not None:
            if not is_hub_name(path):
                return None
            for rev in dict.fromkeys([revision, None]):
                snapshot = cached_snapshot(hub_name(path), rev)
                if snapshot is not None and (snapshot / "tokenizer.json").is_file():
                    return snapshot
            return None
        from huggingface_hub import try_to_load_from_cache

        for rev in dict.fromkeys([revision, None]):
            found = try_to_load_from_cache(path, "tokenizer.json", revision=rev)
            if isinstance(found, str):
                return Path(found).parent
    except Exception:  # not a valid repo id, no huggingface_hub, an unreadable cache: no tokenizer, not an error
        return None
    return None


def _attach_local_tokenizer(model, path: Any, revision: str | None = None) -> Path | None:
    """Attach ``tokenizer.json`` from the directory (or cached hub snapshot) a model object was loaded from;
    returns that directory (None when none was attached)."""
    directory = _tokenizer_directory(path, revision)
    if directory is None:
        return None
    try:
        model.set_tokenizer(Tokenizer.from_directory(directory))
    except Exception as e:  # the weights are fine; a broken tokenizer should not lose them
        warnings.warn(f"not attaching the tokenizer in {directory}: {e}", stacklevel=3)
        return None
    return directory
