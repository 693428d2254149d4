"""SAE files on disk: SAELens's format (read and written) and Gemma Scope's ``params.npz`` (read).

SAELens: a directory with ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``b_enc``,
``W_dec [d_sae, d_in]``, ``b_dec``, and ``threshold`` for JumpReLU). Both cfg.json layouts are read: SAELens <= 5
(top-level ``hook_name``, ``model_name``, ``activation_fn_str`` / ``activation_fn_kwargs: {"k": ...}``; a TopK SAE
there is ``architecture: "standard"`` with ``activation_fn_str: "topk"``) and SAELens 6 (``k`` at top level,
``hook_name`` / ``model_name`` inside ``metadata``, or ``meta``). Required: ``d_in``, ``d_sae``, a hook name,
an architecture (``standard``, ``topk``, ``jumprelu``; ``transcoder`` is read as a standard SAE with
``hook_name_out``). Fields lens does not model are kept in ``cfg.metadata``.

Gemma Scope: a directory (or the file itself) with ``params.npz`` holding ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold``: a JumpReLU SAE with ``apply_b_dec_to_input=False``
(Gemma Scope encodes ``x @ W_enc + b_enc`` without subtracting ``b_dec``). Its hook is ``hook_name=`` when given,
else read from the path: ``layer_<N>`` in it -> ``blocks.<N>.hook_resid_post``, or ``blocks.<N>.hook_mlp_out``
when the path names an ``-mlp-`` release (``gemma-scope-2b-pt-mlp/layer_3/...``), ``blocks.<N>.attn.hook_z`` for
an ``-att-`` release.

Hub names (``org/repo`` plus a folder in it) are resolved by :mod:`lens.sae.loading` (``lens.sae.load``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from lens.sae.config import ARCHITECTURES, RESHAPES, SAEConfig
from lens.sae.modules import CFG_FILE, SAE, WEIGHTS_FILE

NPZ_FILE = "params.npz"
_DERIVED = {"hook_layer", "hook_head_index"}  # follow from the fields lens keeps
_KNOWN = {
    "architecture", "d_in", "d_sae", "hook_name", "hook_name_out", "d_out", "k", "apply_b_dec_to_input",
    "normalize_activations", "dtype", "device", "metadata", "meta", "activation_fn_str", "activation_fn_kwargs",
    "norm_scaling_factor", "reshape_activations",
}  # fmt: skip


def is_sae_directory(path: Path) -> bool:
    """Whether ``path`` is a directory lens reads an SAE from (SAELens's files or ``params.npz``), or the npz."""
    return (path / CFG_FILE).is_file() or (path / NPZ_FILE).is_file() or (path.is_file() and path.suffix == ".npz")


def load_directory(
    path: str | os.PathLike,
    *,
    hook_name: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | None = None,
) -> SAE:
    """The SAE stored at ``path`` (see the module docstring). ``hook_name`` overrides the file's hook;
    ``device`` / ``dtype`` (``"float32"``, ...) override where and how it is loaded."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return _load_npz(path, hook_name, device, dtype)
    if not path.is_dir():
        raise FileNotFoundError(f"no SAE at {path}: not a directory (nor a params.npz file)")
    if (path / CFG_FILE).is_file():
        return _load_saelens(path, hook_name, device, dtype)
    if (path / NPZ_FILE).is_file():
        return _load_npz(path / NPZ_FILE, hook_name, device, dtype)
    raise FileNotFoundError(
        f"{path} holds no SAE: expected {CFG_FILE} + {WEIGHTS_FILE} (SAELens) or {NPZ_FILE} (Gemma Scope); "
        f"it has {sorted(p.name for p in path.iterdir())[:10]}"
    )


def config_from_saelens(raw: dict[str, Any], where: str = "cfg.json", hook_name: str | None = None) -> SAEConfig:
    """An :class:`SAEConfig` from a SAELens cfg.json dict (either layout); ValueError naming a missing or bad field."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must hold a JSON object, got {type(raw).__name__}")
    meta = dict(raw.get("metadata") or raw.get("meta") or {})
    for key in ("d_in", "d_sae"):
        if key not in raw:
            raise ValueError(f"{where} lacks the required field {key!r} (a positive int)")
    arch = raw.get("architecture")
    if arch is None:
        raise ValueError(f"{where} lacks the required field 'architecture' (one of {ARCHITECTURES})")
    fn_kwargs = raw.get("activation_fn_kwargs") or {}
    k = raw.get("k", fn_kwargs.get("k") if isinstance(fn_kwargs, dict) else None)
    hook_name_out = raw.get("hook_name_out", meta.get("hook_name_out"))
    if arch == "standard" and raw.get("activation_fn_str") == "topk":
        arch = "topk"  # SAELens <= 5 stored TopK SAEs as 'standard' with a topk activation function
    elif arch == "transcoder":
        arch = "standard"
    if arch not in ARCHITECTURES:
        raise ValueError(f"{where} field 'architecture' is {arch!r}; lens reads {ARCHITECTURES} (and 'transcoder')")
    if arch != "topk":
        k = None
    name = hook_name or raw.get("hook_name") or meta.get("hook_name")
    if not name:
        raise ValueError(f"{where} lacks the required field 'hook_name' (top level or in 'metadata'); pass hook_name=")
    reshape = raw.get("reshape_activations") or "none"
    if reshape not in RESHAPES:
        raise ValueError(f"{where} field 'reshape_activations' is {reshape!r}; lens reads {RESHAPES}")
    if "reshape_activations" not in raw and name.endswith("attn.hook_z") and raw.get("hook_head_index") is None:
        reshape = "hook_z"  # SAELens < 6: an SAE on hook_z over all heads reads them flattened
    for key in ("hook_name", "hook_layer", "hook_name_out", "d_out"):  # lens keeps these as fields, not metadata
        meta.pop(key, None)
    extra = {key: value for key, value in raw.items() if key not in _KNOWN and key not in _DERIVED}
    for key, value in extra.items():
        if value is not None:
            meta.setdefault(key, value)
    dtype = raw.get("dtype", "float32")
    dtype = dtype.removeprefix("torch.") if isinstance(dtype, str) else dtype
    return SAEConfig(
        architecture=arch,
        d_in=raw["d_in"],
        d_sae=raw["d_sae"],
        hook_name=name,
        hook_name_out=hook_name_out,
        d_out=raw.get("d_out", meta.get("d_out")),
        k=k,
        apply_b_dec_to_input=raw.get("apply_b_dec_to_input", True),
        normalize_activations=raw.get("normalize_activations") or "none",
        reshape_activations=reshape,
        dtype=dtype,
        device=str(raw.get("device", "cpu")),
        metadata=meta,
    )


def _override(cfg: SAEConfig, device: Any, dtype: str | None) -> SAEConfig:
    changes: dict[str, Any] = {}
    if device is not None:
        changes["device"] = str(device)
    elif not _device_usable(cfg.device):
        changes["device"] = "cpu"  # a cfg.json written on a GPU machine still loads here
    if dtype is not None:
        changes["dtype"] = str(dtype).removeprefix("torch.")
    return cfg.replace(**changes) if changes else cfg


def _device_usable(device: str) -> bool:
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        return False
    return d.type == "cpu" or (d.type == "cuda" and torch.cuda.is_available()) or d.type not in ("cuda", "mps")


def _fill(sae: SAE, tensors: dict[str, torch.Tensor], where: str) -> SAE:
    own = dict(sae.named_parameters())
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise ValueError(f"{where} lacks the tensors {missing} (a {sae.cfg.architecture} SAE has {sorted(own)})")
    with torch.no_grad():
        for name, p in own.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"{where}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(p.shape)} "
                    f"(d_in={sae.d_in}, d_sae={sae.d_sae}, d_out={sae.d_out})"
                )
            p.copy_(t.to(p.dtype))
    return sae


def _load_saelens(path: Path, hook_name: str | None, device: Any, dtype: str | None) -> SAE:
    where = str(path / CFG_FILE)
    try:
        raw = json.loads((path / CFG_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON: {e}") from e
    cfg = _override(config_from_saelens(raw, where, hook_name), device, dtype)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{path} has {CFG_FILE} but no {WEIGHTS_FILE}")
    from safetensors.torch import load_file

    sae = _fill(SAE(cfg), load_file(str(weights)), str(weights))
    if raw.get("norm_scaling_factor") is not None:
        sae.norm_scaling_factor = float(raw["norm_scaling_factor"])
    return sae


def hook_name_from_path(path: Path) -> str | None:
    """Gemma Scope's layout -> a lens hook name (``.../layer_12/width_16k/...`` -> ``blocks.12.hook_resid_post``;
    ``-mlp-`` releases -> ``hook_mlp_out``, ``-att-`` -> ``attn.hook_z``); None when the path names no layer."""
    text = path.as_posix()
    m = re.search(r"(?:^|/)layer_(\d+)(?:/|$)", text)
    if m is None:
        return None
    layer = int(m.group(1))
    lower = text.lower()
    if re.search(r"-mlp(-|/|$)", lower):
        return f"blocks.{layer}.hook_mlp_out"
    if re.search(r"-att(n)?(-|/|$)", lower):
        return f"blocks.{layer}.attn.hook_z"
    return f"blocks.{layer}.hook_resid_post"


def _load_npz(file: Path, hook_name: str | None, device: Any, dtype: str | None) -> SAE:
    import numpy as np

    name = hook_name or hook_name_from_path(file.resolve().parent) or hook_name_from_path(file.parent)
    if name is None:
        raise ValueError(
            f"cannot tell which hook the Gemma Scope SAE {file} reads: its path has no 'layer_<N>' folder; "
            "pass hook_name= (e.g. 'blocks.12.hook_resid_post')"
        )
    with np.load(file) as npz:
        arrays = {key: torch.from_numpy(np.asarray(npz[key], dtype=np.float32)) for key in npz.files}
    for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        if key not in arrays:
            raise ValueError(f"{file} lacks the array {key!r} (Gemma Scope's params.npz has W_enc, W_dec, b_enc, "
                             f"b_dec, threshold; it has {sorted(arrays)})")  # fmt: skip
    if arrays["W_enc"].ndim != 2:
        raise ValueError(f"{file}: W_enc must be 2-D [d_in, d_sae], got shape {tuple(arrays['W_enc'].shape)}")
    d_in, d_sae = arrays["W_enc"].shape
    cfg = SAEConfig(
        architecture="jumprelu",
        d_in=int(d_in),
        d_sae=int(d_sae),
        hook_name=name,
        apply_b_dec_to_input=False,
        reshape_activations="hook_z" if name.endswith("attn.hook_z") else "none",  # the -att- releases
        metadata={"source": "gemma-scope", "path": str(file)},
    )
    return _fill(SAE(_override(cfg, device, dtype)), arrays, str(file))
