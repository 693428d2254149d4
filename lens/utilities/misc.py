"""Environment and object helpers with TransformerLens's names: devices, library checks, nested attributes,
overridable defaults, and the Hugging Face Hub cache.

>>> get_device()                       # cuda when available, else cpu (mps only on request)
device(type='cpu')
>>> get_nested_attr(model, "blocks.0.attn")      # model.blocks[0].attn  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "CACHE_DIR",
    "USE_DEFAULT_VALUE",
    "LocallyOverridenDefaults",
    "clear_huggingface_cache",
    "download_file_from_hf",
    "get_device",
    "get_nested_attr",
    "is_library_available",
    "override_or_use_default_value",
    "print_gpu_mem",
    "select_compatible_kwargs",
    "set_nested_attr",
    "warn_if_mps",
]

USE_DEFAULT_VALUE = None
"""Passed for an overridable default (``prepend_bos``, ``padding_side``): use the model's default."""

_ALLOW_MPS = ("LENS_ALLOW_MPS", "TRANSFORMERLENS_ALLOW_MPS")


def _hub_cache_dir() -> str:
    """huggingface_hub's cache directory by its documented environment rules, without importing it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    home = os.environ.get("HF_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


CACHE_DIR = _hub_cache_dir()
"""The Hugging Face Hub cache directory (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""


def is_library_available(name: str) -> bool:
    """True if ``name`` is imported or importable, checked without importing it.

    >>> is_library_available("torch"), is_library_available("surely_not_installed_xyz")
    (True, False)
    """
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def select_compatible_kwargs(kwargs_dict: dict[str, Any], callable: Callable) -> dict[str, Any]:
    """The items of ``kwargs_dict`` whose keys are named parameters of ``callable``.

    >>> select_compatible_kwargs({"a": 1, "z": 2}, lambda a, b=0: a)
    {'a': 1}
    """
    params = inspect.signature(callable).parameters
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs_dict.items() if k in named}


def download_file_from_hf(
    repo_name: str,
    file_name: str,
    subfolder: str = ".",
    cache_dir: str | None = CACHE_DIR,
    force_is_torch: bool = False,
    weights_only: bool = True,
    **kwargs: Any,
) -> Any:
    """Fetch ``subfolder/file_name`` of a Hub repo (or take it from the local cache) and load it.

    ``.pth`` files (or any, with ``force_is_torch``) come back as ``torch.load`` results (``weights_only``
    by default: pass False only for files you trust), ``.json`` as parsed JSON, anything else as its
    local path. ``kwargs`` that ``huggingface_hub.hf_hub_download`` takes (``revision``, ``token``, ...) are
    passed on. Offline and not cached: OSError saying so.

    >>> cfg = download_file_from_hf("NeelNanda/Attn_Only_1L512W_C4_Code", "config.json")   # doctest: +SKIP
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise ImportError("download_file_from_hf needs huggingface_hub: pip install huggingface_hub") from e
    try:
        path = hf_hub_download(
            repo_id=repo_name,
            filename=file_name,
            subfolder=subfolder,
            cache_dir=cache_dir,
            **select_compatible_kwargs(kwargs, hf_hub_download),
        )
    except Exception as e:  # network errors, missing repo/file, offline mode without a cached copy
        raise OSError(
            f"could not get {file_name!r} (subfolder {subfolder!r}) of the Hub repo {repo_name!r}: {e}. "
            "It must be downloadable or already in the Hugging Face cache "
            f"({cache_dir or CACHE_DIR})."
        ) from e
    if path.endswith(".pth") or force_is_torch:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    if path.endswith(".json"):
        with open(path) as f:
            return json.load(f)
    print("File type not supported:", path.split(".")[-1])
    return path


def clear_huggingface_cache() -> None:
    """Delete the Hugging Face Hub cache directory (:data:`CACHE_DIR`) and everything in it.

    Every downloaded model and dataset file is gone afterwards; lens never calls this itself.
    """
    print("Deleting Hugging Face cache directory and all its contents.")
    shutil.rmtree(CACHE_DIR, ignore_errors=True)


def print_gpu_mem(step_name: str = "") -> None:
    """Print the CUDA memory allocated by tensors, in GiB (0 without CUDA).

    >>> print_gpu_mem("after forward")
    after forward ~ 0.0 GiB allocated on GPU.
    """
    allocated = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    print(f"{step_name} ~ {round(allocated / 2**30, 2)} GiB allocated on GPU.")


def _mps_allowed() -> bool:
    return any(os.environ.get(v, "") == "1" for v in _ALLOW_MPS)


def get_device() -> torch.device:
    """``cuda`` when available, else ``cpu``; ``mps`` only when ``LENS_ALLOW_MPS=1`` (or
    ``TRANSFORMERLENS_ALLOW_MPS=1``) is set, because of known silent correctness issues of the MPS backend.

    >>> get_device().type in ("cuda", "cpu", "mps")
    True
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available() and mps.is_built() and _mps_allowed():
        return torch.device("mps")
    return torch.device("cpu")


_mps_warned = False


def warn_if_mps(device: str | torch.device | None) -> None:
    """Warn once per process if ``device`` is MPS and MPS was not explicitly allowed (see :func:`get_device`)."""
    global _mps_warned
    kind = device.type if isinstance(device, torch.device) else device
    if _mps_warned or kind != "mps" or _mps_allowed():
        return
    _mps_warned = True
    warnings.warn(
        f"the MPS backend may give silently wrong results (PyTorch {torch.__version__}); set LENS_ALLOW_MPS=1 "
        "to silence this warning",
        UserWarning,
        stacklevel=2,
    )


def override_or_use_default_value(default_flag: Any, override: Any = None) -> Any:
    """``override`` unless it is None, else ``default_flag``.

    >>> override_or_use_default_value(True, None), override_or_use_default_value(True, False)
    (True, False)
    """
    return override if override is not None else default_flag


def get_nested_attr(obj: Any, attr_str: str) -> Any:
    """``obj.a.b.c`` for ``attr_str = "a.b.c"`` (integer parts index sequences: ``"blocks.0"``).

    >>> get_nested_attr(model, "cfg.n_layers")   # doctest: +SKIP
    """
    for attr in attr_str.split("."):
        obj = _get_one(obj, attr)
    return obj


def set_nested_attr(obj: Any, attr_str: str, value: Any) -> None:
    """Set ``obj.a.b.c = value`` for ``attr_str = "a.b.c"``.

    >>> set_nested_attr(model, "cfg.default_prepend_bos", False)   # doctest: +SKIP
    """
    *path, last = attr_str.split(".")
    for attr in path:
        obj = _get_one(obj, attr)
    setattr(obj, last, value)


def _get_one(obj: Any, attr: str) -> Any:
    if hasattr(obj, attr) or not attr.lstrip("-").isdigit() or not hasattr(obj, "__getitem__"):
        return getattr(obj, attr)
    return obj[int(attr)]


class LocallyOverridenDefaults:
    """Context manager: temporarily override a model's defaults, restored on exit (also after an error).

    Keys: ``prepend_bos`` (``model.cfg.default_prepend_bos``; True, False or None = keep) and
    ``padding_side`` (``"left"``, ``"right"`` or None = keep; ``model.cfg.default_padding_side`` and, when
    the tokenizer has one, ``model.tokenizer.padding_side``; skipped when the model has no tokenizer).

    >>> with LocallyOverridenDefaults(model, prepend_bos=False, padding_side="left"):   # doctest: +SKIP
    ...     tokens = model.to_tokens(["a", "bb"])
    """

    _VALID = {"prepend_bos": (None, True, False), "padding_side": (None, "left", "right")}

    def __init__(self, model: Any, **overrides: Any):
        for name, value in overrides.items():
            if name not in self._VALID:
                raise ValueError(
                    f"{name} is not a valid parameter to override. Valid parameters are {list(self._VALID)}."
                )
            if not any(
                value is v or (v is not None and value == v and type(value) is type(v)) for v in self._VALID[name]
            ):
                raise ValueError(f"{name} must be one of {list(self._VALID[name])}, but got {value!r}.")
        self.model = model
        self.overrides = overrides
        self._saved: list[tuple[Any, str, Any]] = []

    def _locations(self, name: str) -> list[tuple[Any, str]]:
        cfg, tokenizer = getattr(self.model, "cfg", None), getattr(self.model, "tokenizer", None)
        if name == "prepend_bos":
            return [(cfg, "default_prepend_bos")]
        if tokenizer is None:
            return []
        return [(o, a) for o, a in ((cfg, "default_padding_side"), (tokenizer, "padding_side")) if hasattr(o, a)]

    def __enter__(self) -> LocallyOverridenDefaults:
        self._saved = []
        for name, override in self.overrides.items():
            for obj, attr in self._locations(name):
                current = getattr(obj, attr)
                self._saved.append((obj, attr, copy.deepcopy(current)))
                setattr(obj, attr, override_or_use_default_value(current, override))
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        for obj, attr, value in reversed(self._saved):
            setattr(obj, attr, value)
        self._saved = []
