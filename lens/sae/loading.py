"""``lens.sae.load``: an SAE from a local path or a hub name, through the Hugging Face cache as lens models.

A local path (directory or ``params.npz``) is read by :func:`lens.sae.formats.load_directory`. Otherwise the
name is a hub repository, optionally followed by the folder holding the SAE: ``"org/repo"`` with
``subfolder="blocks.8.hook_resid_pre"``, or ``"org/repo/blocks.8.hook_resid_pre"`` (everything after
``org/repo``). The snapshot is looked up in the cache (``HF_HUB_CACHE`` / ``HF_HOME``, read at call time, as
:mod:`lens.hub`); when the cache lacks it and downloads are allowed (not ``local_files_only=True``, not
``HF_HUB_OFFLINE=1``) only that folder's files are fetched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lens import hub
from lens.sae.formats import is_sae_directory, load_directory
from lens.sae.modules import SAE

_FILES = ("cfg.json", "sae_weights.safetensors", "params.npz")


def load(
    path_or_name: str | os.PathLike,
    *,
    subfolder: str | None = None,
    hook_name: str | None = None,
    device: Any = None,
    dtype: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> SAE:
    """Load an SAE (SAELens directory, Gemma Scope ``params.npz``, or a hub name; see the module docstring).

    >>> sae = lens.sae.load("checkpoints/my-sae")  # doctest: +SKIP
    >>> sae = lens.sae.load("google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82")  # doctest: +SKIP
    """
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(f"lens.sae.load needs a path or a hub name, got {type(path_or_name).__name__}")
    local = Path(path_or_name).expanduser()
    if subfolder is not None:
        local = local / subfolder
    if local.exists():
        return load_directory(local, hook_name=hook_name, device=device, dtype=dtype)
    if isinstance(path_or_name, os.PathLike) or str(path_or_name).startswith((".", "/", "~")):
        raise FileNotFoundError(f"no SAE at {local}: the path does not exist")
    name = str(path_or_name).removeprefix("hf://")
    parts = name.split("/")
    repo = "/".join(parts[:2])
    folder = "/".join(p for p in [*parts[2:], *([subfolder] if subfolder else [])] if p)
    if not hub.is_hub_name(repo):
        raise FileNotFoundError(f"{path_or_name!r} is neither an existing path nor a hub name ('org/repo[/folder]')")
    hub.check_arguments(revision, cache_dir, local_files_only)
    directory = _snapshot_folder(repo, folder, revision, cache_dir, local_files_only)
    # Gemma Scope's hook is read from the folder name (layer_12/...), the release from the repo name
    npz_hook = hook_name
    if npz_hook is None and (directory / "params.npz").is_file() and not (directory / "cfg.json").is_file():
        from lens.sae.formats import hook_name_from_path

        npz_hook = hook_name_from_path(Path(repo.split("/")[-1]) / folder)
    return load_directory(directory, hook_name=npz_hook, device=device, dtype=dtype)


def _snapshot_folder(
    repo: str, folder: str, revision: str | None, cache_dir: Any, local_files_only: bool | None
) -> Path:
    cache = hub.cache_directory(cache_dir)
    snapshot = hub.cached_snapshot(repo, revision, cache)
    if snapshot is not None and is_sae_directory(snapshot / folder if folder else snapshot):
        return snapshot / folder if folder else snapshot
    where = f"{repo}" + (f" (folder {folder!r})" if folder else "")
    if local_files_only or hub.offline():
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        found = "its cached snapshot lacks the SAE files" if snapshot is not None else f"it is not in the cache {cache}"
        raise FileNotFoundError(
            f"SAE {where}: {found}; {why}, so lens does not download. Fetch it with `hf download {repo}"
            + (f" --include '{folder}/*'" if folder else "")
            + "`, or pass a local directory"
        )
    from huggingface_hub import snapshot_download

    patterns = [f"{folder}/{f}" if folder else f for f in _FILES]
    path = Path(snapshot_download(repo, revision=revision, cache_dir=str(cache), allow_patterns=patterns))
    target = path / folder if folder else path
    if not is_sae_directory(target):
        raise FileNotFoundError(f"SAE {where}: the repository has none of {_FILES} there")
    return target
