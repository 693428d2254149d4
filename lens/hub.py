"""Hugging Face hub names -> local snapshot directories, through the Hugging Face cache.

One concern: given ``"org/name"`` (or a TransformerLens short name such as ``"gpt2-small"`` or
``"pythia-70m"``, see :data:`TL_ALIASES`), find the snapshot directory that :mod:`lens.loading` then reads
like any local checkpoint. The local cache is looked at first; the network is used only when allowed
(not ``local_files_only=True``, not ``HF_HUB_OFFLINE=1``), and then only the files lens reads are
fetched (:data:`METADATA_FILES` and one set of weights: ``model.safetensors``, the shards a
``model.safetensors.index.json`` lists, or the ``pytorch_model.bin`` fallback), with ``huggingface_hub``'s
own progress bar. The cache directory and offline mode are read from the environment at call time
(``HF_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE``), not when ``huggingface_hub`` was imported.

Errors are ``FileNotFoundError`` (not cached while offline, no such repository or revision, no weights
lens reads), ``TypeError`` for arguments of the wrong type, checked before anything else.

>>> hub_name("gpt2-small")
'openai-community/gpt2'
>>> resolve("EleutherAI/pythia-70m", local_files_only=True)  # doctest: +SKIP
PosixPath('/root/.cache/huggingface/hub/models--EleutherAI--pythia-70m/snapshots/<commit>')
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["METADATA_FILES", "TL_ALIASES", "cache_directory", "cached_snapshot", "hub_name", "is_hub_name", "resolve"]

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
# everything lens reads besides the weights (fetched when the repository has them)
METADATA_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

# TransformerLens's names (transformer_lens.loading_from_pretrained: OFFICIAL_MODEL_NAMES and MODEL_ALIASES,
# TransformerLens 2.18) for the families lens loads: hub id -> the short names that mean it. TransformerLens's
# official names without an organisation (``gpt2``, ``distilgpt2``) map to the hub's current ids. Looked up
# case-insensitively, as TransformerLens does. TransformerLens 2.18 has no OLMo-2 or Qwen3-MoE names.
_TL_NAMES: dict[str, tuple[str, ...]] = {
    "openai-community/gpt2": ("gpt2", "gpt2-small"),
    "openai-community/gpt2-medium": ("gpt2-medium",),
    "openai-community/gpt2-large": ("gpt2-large",),
    "openai-community/gpt2-xl": ("gpt2-xl",),
    "distilbert/distilgpt2": ("distilgpt2", "distillgpt2", "distill-gpt2", "distil-gpt2", "gpt2-xs"),
    "facebook/opt-125m": ("opt-125m", "opt-small", "opt"),
    "facebook/opt-1.3b": ("opt-1.3b", "opt-medium"),
    "facebook/opt-2.7b": ("opt-2.7b", "opt-large"),
    "facebook/opt-6.7b": ("opt-6.7b", "opt-xl"),
    "facebook/opt-13b": ("opt-13b", "opt-xxl"),
    "facebook/opt-30b": ("opt-30b", "opt-xxxl"),
    "facebook/opt-66b": ("opt-66b", "opt-xxxxl"),
    "EleutherAI/gpt-neo-125M": ("gpt-neo-125M", "gpt-neo-small", "neo-small", "neo"),
    "EleutherAI/gpt-neo-1.3B": ("gpt-neo-1.3B", "gpt-neo-medium", "neo-medium"),
    "EleutherAI/gpt-neo-2.7B": ("gpt-neo-2.7B", "gpt-neo-large", "neo-large"),
    "EleutherAI/gpt-j-6B": ("gpt-j-6B", "gpt-j", "gptj"),
    "EleutherAI/gpt-neox-20b": ("gpt-neox-20b", "gpt-neox", "neox"),
    "stanford-crfm/alias-gpt2-small-x21": (
        "stanford-gpt2-small-a",
        "alias-gpt2-small-x21",
        "gpt2-mistral-small-a",
        "gpt2-stanford-small-a",
    ),
    "stanford-crfm/battlestar-gpt2-small-x49": (
        "stanford-gpt2-small-b",
        "battlestar-gpt2-small-x49",
        "gpt2-mistral-small-b",
    ),
    "stanford-crfm/caprica-gpt2-small-x81": (
        "stanford-gpt2-small-c",
        "caprica-gpt2-small-x81",
        "gpt2-mistral-small-c",
        "gpt2-stanford-small-c",
    ),
    "stanford-crfm/darkmatter-gpt2-small-x343": (
        "stanford-gpt2-small-d",
        "darkmatter-gpt2-small-x343",
        "gpt2-mistral-small-d",
    ),
    "stanford-crfm/expanse-gpt2-small-x777": (
        "stanford-gpt2-small-e",
        "expanse-gpt2-small-x777",
        "gpt2-mistral-small-e",
    ),
    "stanford-crfm/arwen-gpt2-medium-x21": (
        "stanford-gpt2-medium-a",
        "arwen-gpt2-medium-x21",
        "gpt2-medium-small-a",
        "gpt2-stanford-medium-a",
    ),
    "stanford-crfm/beren-gpt2-medium-x49": (
        "stanford-gpt2-medium-b",
        "beren-gpt2-medium-x49",
        "gpt2-medium-small-b",
        "gpt2-stanford-medium-b",
    ),
    "stanford-crfm/celebrimbor-gpt2-medium-x81": (
        "stanford-gpt2-medium-c",
        "celebrimbor-gpt2-medium-x81",
        "gpt2-medium-small-c",
    ),
    "stanford-crfm/durin-gpt2-medium-x343": (
        "stanford-gpt2-medium-d",
        "durin-gpt2-medium-x343",
        "gpt2-medium-small-d",
        "gpt2-stanford-medium-d",
    ),
    "stanford-crfm/eowyn-gpt2-medium-x777": (
        "stanford-gpt2-medium-e",
        "eowyn-gpt2-medium-x777",
        "gpt2-medium-small-e",
        "gpt2-stanford-medium-e",
    ),
    "EleutherAI/pythia-14m": ("pythia-14m",),
    "EleutherAI/pythia-31m": ("pythia-31m",),
    "EleutherAI/pythia-70m": ("pythia-70m", "pythia", "EleutherAI/pythia-19m", "pythia-19m"),
    "EleutherAI/pythia-160m": ("pythia-160m", "EleutherAI/pythia-125m", "pythia-125m"),
    "EleutherAI/pythia-410m": ("pythia-410m", "EleutherAI/pythia-350m", "pythia-350m"),
    "EleutherAI/pythia-1b": ("pythia-1b", "EleutherAI/pythia-800m", "pythia-800m"),
    "EleutherAI/pythia-1.4b": ("pythia-1.4b", "EleutherAI/pythia-1.3b", "pythia-1.3b"),
    "EleutherAI/pythia-2.8b": ("pythia-2.8b", "EleutherAI/pythia-2.7b", "pythia-2.7b"),
    "EleutherAI/pythia-6.9b": ("pythia-6.9b", "EleutherAI/pythia-6.7b", "pythia-6.7b"),
    "EleutherAI/pythia-12b": ("pythia-12b", "EleutherAI/pythia-13b", "pythia-13b"),
    "EleutherAI/pythia-70m-deduped": ("pythia-70m-deduped", "EleutherAI/pythia-19m-deduped", "pythia-19m-deduped"),
    "EleutherAI/pythia-160m-deduped": ("pythia-160m-deduped", "EleutherAI/pythia-125m-deduped", "pythia-125m-deduped"),
    "EleutherAI/pythia-410m-deduped": ("pythia-410m-deduped", "EleutherAI/pythia-350m-deduped", "pythia-350m-deduped"),
    "EleutherAI/pythia-1b-deduped": ("pythia-1b-deduped", "EleutherAI/pythia-800m-deduped", "pythia-800m-deduped"),
    "EleutherAI/pythia-1.4b-deduped": ("pythia-1.4b-deduped", "EleutherAI/pythia-1.3b-deduped", "pythia-1.3b-deduped"),
    "EleutherAI/pythia-2.8b-deduped": ("pythia-2.8b-deduped", "EleutherAI/pythia-2.7b-deduped", "pythia-2.7b-deduped"),
    "EleutherAI/pythia-6.9b-deduped": ("pythia-6.9b-deduped", "EleutherAI/pythia-6.7b-deduped", "pythia-6.7b-deduped"),
    "EleutherAI/pythia-12b-deduped": ("pythia-12b-deduped", "EleutherAI/pythia-13b-deduped", "pythia-13b-deduped"),
    "EleutherAI/pythia-70m-v0": ("pythia-70m-v0", "pythia-v0", "EleutherAI/pythia-19m-v0", "pythia-19m-v0"),
    "EleutherAI/pythia-160m-v0": ("pythia-160m-v0", "EleutherAI/pythia-125m-v0", "pythia-125m-v0"),
    "EleutherAI/pythia-410m-v0": ("pythia-410m-v0", "EleutherAI/pythia-350m-v0", "pythia-350m-v0"),
    "EleutherAI/pythia-1b-v0": ("pythia-1b-v0", "EleutherAI/pythia-800m-v0", "pythia-800m-v0"),
    "EleutherAI/pythia-1.4b-v0": ("pythia-1.4b-v0", "EleutherAI/pythia-1.3b-v0", "pythia-1.3b-v0"),
    "EleutherAI/pythia-2.8b-v0": ("pythia-2.8b-v0", "EleutherAI/pythia-2.7b-v0", "pythia-2.7b-v0"),
    "EleutherAI/pythia-6.9b-v0": ("pythia-6.9b-v0", "EleutherAI/pythia-6.7b-v0", "pythia-6.7b-v0"),
    "EleutherAI/pythia-12b-v0": ("pythia-12b-v0", "EleutherAI/pythia-13b-v0", "pythia-13b-v0"),
    "EleutherAI/pythia-70m-deduped-v0": (
        "pythia-70m-deduped-v0",
        "EleutherAI/pythia-19m-deduped-v0",
        "pythia-19m-deduped-v0",
    ),
    "EleutherAI/pythia-160m-deduped-v0": (
        "pythia-160m-deduped-v0",
        "EleutherAI/pythia-125m-deduped-v0",
        "pythia-125m-deduped-v0",
    ),
    "EleutherAI/pythia-410m-deduped-v0": (
        "pythia-410m-deduped-v0",
        "EleutherAI/pythia-350m-deduped-v0",
        "pythia-350m-deduped-v0",
    ),
    "EleutherAI/pythia-1b-deduped-v0": (
        "pythia-1b-deduped-v0",
        "EleutherAI/pythia-800m-deduped-v0",
        "pythia-800m-deduped-v0",
    ),
    "EleutherAI/pythia-1.4b-deduped-v0": (
        "pythia-1.4b-deduped-v0",
        "EleutherAI/pythia-1.3b-deduped-v0",
        "pythia-1.3b-deduped-v0",
    ),
    "EleutherAI/pythia-2.8b-deduped-v0": (
        "pythia-2.8b-deduped-v0",
        "EleutherAI/pythia-2.7b-deduped-v0",
        "pythia-2.7b-deduped-v0",
    ),
    "EleutherAI/pythia-6.9b-deduped-v0": (
        "pythia-6.9b-deduped-v0",
        "EleutherAI/pythia-6.7b-deduped-v0",
        "pythia-6.7b-deduped-v0",
    ),
    "EleutherAI/pythia-12b-deduped-v0": (
        "pythia-12b-deduped-v0",
        "EleutherAI/pythia-13b-deduped-v0",
        "pythia-13b-deduped-v0",
    ),
    "EleutherAI/pythia-160m-seed1": ("pythia-160m-seed1", "EleutherAI/pythia-125m-seed1", "pythia-125m-seed1"),
    "EleutherAI/pythia-160m-seed2": ("pythia-160m-seed2", "EleutherAI/pythia-125m-seed2", "pythia-125m-seed2"),
    "EleutherAI/pythia-160m-seed3": ("pythia-160m-seed3", "EleutherAI/pythia-125m-seed3", "pythia-125m-seed3"),
    "meta-llama/Llama-2-7b-hf": ("Llama-2-7b",),
    "meta-llama/Llama-2-7b-chat-hf": ("Llama-2-7b-chat",),
    "meta-llama/Llama-2-13b-hf": ("Llama-2-13b",),
    "meta-llama/Llama-2-13b-chat-hf": ("Llama-2-13b-chat",),
    "meta-llama/Llama-2-70b-chat-hf": ("Llama-2-70b-chat", "meta-llama-2-70b-chat-hf"),
    "codellama/CodeLlama-7b-hf": ("CodeLlamallama-2-7b",),
    "codellama/CodeLlama-7b-Python-hf": ("CodeLlama-7b-python",),
    "codellama/CodeLlama-7b-Instruct-hf": ("CodeLlama-7b-instruct",),
    "roneneldan/TinyStories-1M": ("tiny-stories-1M",),
    "roneneldan/TinyStories-3M": ("tiny-stories-3M",),
    "roneneldan/TinyStories-8M": ("tiny-stories-8M",),
    "roneneldan/TinyStories-28M": ("tiny-stories-28M",),
    "roneneldan/TinyStories-33M": ("tiny-stories-33M",),
    "roneneldan/TinyStories-Instruct-1M": ("tiny-stories-instruct-1M",),
    "roneneldan/TinyStories-Instruct-3M": ("tiny-stories-instruct-3M",),
    "roneneldan/TinyStories-Instruct-8M": ("tiny-stories-instruct-8M",),
    "roneneldan/TinyStories-Instruct-28M": ("tiny-stories-instruct-28M",),
    "roneneldan/TinyStories-Instruct-33M": ("tiny-stories-instruct-33M",),
    "roneneldan/TinyStories-1Layer-21M": ("tiny-stories-1L-21M",),
    "roneneldan/TinyStories-2Layers-33M": ("tiny-stories-2L-33M",),
    "roneneldan/TinyStories-Instuct-1Layer-21M": ("tiny-stories-instruct-1L-21M",),
    "roneneldan/TinyStories-Instruct-2Layers-33M": ("tiny-stories-instruct-2L-33M",),
    "mistralai/Mistral-7B-v0.1": ("mistral-7b",),
    "mistralai/Mistral-7B-Instruct-v0.1": ("mistral-7b-instruct",),
    "mistralai/Mistral-Nemo-Base-2407": ("mistral-nemo-base-2407",),
    "mistralai/Mixtral-8x7B-v0.1": ("mixtral", "mixtral-8x7b"),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": ("mixtral-instruct", "mixtral-8x7b-instruct"),
    "Qwen/Qwen1.5-0.5B": ("qwen1.5-0.5b",),
    "Qwen/Qwen1.5-0.5B-Chat": ("qwen1.5-0.5b-chat",),
    "Qwen/Qwen1.5-1.8B": ("qwen1.5-1.8b",),
    "Qwen/Qwen1.5-1.8B-Chat": ("qwen1.5-1.8b-chat",),
    "Qwen/Qwen1.5-4B": ("qwen1.5-4b",),
    "Qwen/Qwen1.5-4B-Chat": ("qwen1.5-4b-chat",),
    "Qwen/Qwen1.5-7B": ("qwen1.5-7b",),
    "Qwen/Qwen1.5-7B-Chat": ("qwen1.5-7b-chat",),
    "Qwen/Qwen1.5-14B": ("qwen1.5-14b",),
    "Qwen/Qwen1.5-14B-Chat": ("qwen1.5-14b-chat",),
    "Qwen/Qwen2-0.5B": ("qwen2-0.5b",),
    "Qwen/Qwen2-0.5B-Instruct": ("qwen2-0.5b-instruct",),
    "Qwen/Qwen2-1.5B": ("qwen2-1.5b",),
    "Qwen/Qwen2-1.5B-Instruct": ("qwen2-1.5b-instruct",),
    "Qwen/Qwen2-7B": ("qwen2-7b",),
    "Qwen/Qwen2-7B-Instruct": ("qwen2-7b-instruct",),
    "Qwen/Qwen2.5-0.5B": ("qwen2.5-0.5b",),
    "Qwen/Qwen2.5-0.5B-Instruct": ("qwen2.5-0.5b-instruct",),
    "Qwen/Qwen2.5-1.5B": ("qwen2.5-1.5b",),
    "Qwen/Qwen2.5-1.5B-Instruct": ("qwen2.5-1.5b-instruct",),
    "Qwen/Qwen2.5-3B": ("qwen2.5-3b",),
    "Qwen/Qwen2.5-3B-Instruct": ("qwen2.5-3b-instruct",),
    "Qwen/Qwen2.5-7B": ("qwen2.5-7b",),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2.5-7b-instruct",),
    "Qwen/Qwen2.5-14B": ("qwen2.5-14b",),
    "Qwen/Qwen2.5-14B-Instruct": ("qwen2.5-14b-instruct",),
    "Qwen/Qwen2.5-32B": ("qwen2.5-32b",),
    "Qwen/Qwen2.5-32B-Instruct": ("qwen2.5-32b-instruct",),
    "Qwen/Qwen2.5-72B": ("qwen2.5-72b",),
    "Qwen/Qwen2.5-72B-Instruct": ("qwen2.5-72b-instruct",),
    "Qwen/QwQ-32B-Preview": ("qwen-32b-preview",),
    "Qwen/Qwen3-0.6B": ("qwen3-0.6b",),
    "Qwen/Qwen3-0.6B-Base": ("qwen3-0.6b-base",),
    "Qwen/Qwen3-1.7B": ("qwen3-1.7b",),
    "Qwen/Qwen3-4B": ("qwen3-4b",),
    "Qwen/Qwen3-8B": ("qwen3-8b",),
    "Qwen/Qwen3-14B": ("qwen3-14b",),
    "microsoft/phi-1": ("phi-1",),
    "microsoft/phi-1_5": ("phi-1_5",),
    "microsoft/phi-2": ("phi-2",),
    "microsoft/Phi-3-mini-4k-instruct": ("phi-3",),
    "microsoft/phi-4": ("phi-4",),
    "google/gemma-2b": ("gemma-2b",),
    "google/gemma-7b": ("gemma-7b",),
    "google/gemma-2b-it": ("gemma-2b-it",),
    "google/gemma-7b-it": ("gemma-7b-it",),
    "google/gemma-2-2b": ("gemma-2-2b",),
    "google/gemma-2-2b-it": ("gemma-2-2b-it",),
    "google/gemma-2-9b": ("gemma-2-9b",),
    "google/gemma-2-9b-it": ("gemma-2-9b-it",),
    "google/gemma-2-27b": ("gemma-2-27b",),
    "google/gemma-2-27b-it": ("gemma-2-27b-it",),
    "google/gemma-3-270m": ("gemma-3-270m",),
    "google/gemma-3-270m-it": ("gemma-3-270m-it",),
    "google/gemma-3-1b-pt": ("gemma-3-1b-pt",),
    "google/gemma-3-1b-it": ("gemma-3-1b-it",),
    "google/gemma-3-4b-pt": ("gemma-3-4b-pt",),
    "google/gemma-3-4b-it": ("gemma-3-4b-it",),
    "google/gemma-3-12b-pt": ("gemma-3-12b-pt",),
    "google/gemma-3-12b-it": ("gemma-3-12b-it",),
    "google/gemma-3-27b-pt": ("gemma-3-27b-pt",),
    "google/gemma-3-27b-it": ("gemma-3-27b-it",),
    "google/medgemma-4b-pt": ("medgemma-4b-pt",),
    "google/medgemma-4b-it": ("medgemma-4b-it",),
    "google/medgemma-27b-it": ("medgemma-27b-it",),
    "google/medgemma-27b-text-it": ("medgemma-27b-text-it",),
    "01-ai/Yi-6B": ("yi-6b", "Yi-6B"),
    "01-ai/Yi-34B": ("yi-34b", "Yi-34B"),
    "01-ai/Yi-6B-Chat": ("yi-6b-chat", "Yi-6B-Chat"),
    "01-ai/Yi-34B-Chat": ("yi-34b-chat", "Yi-34B-Chat"),
}
TL_ALIASES: dict[str, str] = {alias: repo for repo, aliases in _TL_NAMES.items() for alias in aliases}
_BY_LOWER = {alias.lower(): repo for alias, repo in TL_ALIASES.items()}

_REPO_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
_TRUE = {"1", "on", "yes", "true"}


def hub_name(name: str) -> str:
    """The hub id ``name`` means: a TransformerLens alias's repository, else ``name`` itself (``hf://`` dropped)."""
    name = name.removeprefix("hf://")
    return _BY_LOWER.get(name.lower(), name)


def is_hub_name(name: Any) -> bool:
    """Whether ``name`` is a str shaped like a hub id (``org/name`` or ``name``, optionally ``hf://``) or an alias."""
    if not isinstance(name, str):
        return False
    name = name.removeprefix("hf://")
    if name.lower() in _BY_LOWER:
        return True
    return (
        bool(_REPO_ID.match(name))
        and "--" not in name
        and ".." not in name
        and not name.startswith((".", "-"))
        and not name.endswith((".", "-"))
        and len(name) <= 96
    )


def cache_directory(cache_dir: str | os.PathLike | None = None) -> Path:
    """The hub cache: ``cache_dir``, else ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``$XDG_CACHE_HOME/huggingface/hub``,
    ``~/.cache/huggingface/hub`` (read now, as ``huggingface_hub`` reads them at import)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return Path(env.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "huggingface" / "hub"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now; unset: ``huggingface_hub``'s own setting."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is not None:
        return value.strip().lower() in _TRUE
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_arguments(revision: Any = None, cache_dir: Any = None, local_files_only: Any = None) -> None:
    """``TypeError`` for hub options of the wrong type (called before any work)."""
    if revision is not None and not isinstance(revision, str):
        raise TypeError(f"revision must be a str (branch, tag or commit hash) or None, got {type(revision).__name__}")
    if isinstance(revision, str) and not revision.strip():
        raise ValueError("revision must be a branch, tag or commit hash, got an empty string")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a path or None, got {type(cache_dir).__name__}")
    if local_files_only is not None and not isinstance(local_files_only, bool):
        raise TypeError(f"local_files_only must be a bool or None, got {type(local_files_only).__name__}")


def _fetch_command(repo: str, revision: str | None, cache_dir: str | os.PathLike | None) -> str:
    extra = (f" --revision {revision}" if revision else "") + (f" --cache-dir {cache_dir}" if cache_dir else "")
    return f"`hf download {repo}{extra}` (or `huggingface-cli download {repo}{extra}`)"


def _missing_weights(snapshot: Path) -> list[str] | None:
    """None when ``snapshot`` holds config.json and one complete set of weights, else what it lacks."""
    missing = [] if (snapshot / "config.json").is_file() else ["config.json"]
    for weights in (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX):  # lens.loading's order
        if (snapshot / weights).is_file():
            shards = _shards(snapshot / weights) if weights.endswith(".json") else []
            return (missing + [s for s in shards if not (snapshot / s).is_file()]) or None
    return [*missing, f"{SAFETENSORS} (or {SAFETENSORS_INDEX} and its shards, or {TORCH_BIN})"]


def read_shard_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index, ``{tensor name: shard file}`` (``ValueError`` naming a malformed file).

    Shared by :mod:`lens.loading` (which opens the shards) and the cache checks here (which look for them).
    """
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index} is not a valid shard index (needs a 'weight_map' object): {e}") from e
    if not isinstance(weight_map, dict):
        raise ValueError(
            f"{index} is not a valid shard index (needs a 'weight_map' object): got {type(weight_map).__name__}"
        )
    return weight_map


def _shards(index: Path) -> list[str]:
    try:
        return sorted(set(read_shard_index(index).values()))
    except OSError as e:
        raise ValueError(f"{index} is not a valid shard index (needs a 'weight_map' object): {e}") from e


def cached_snapshot(repo: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached snapshot directory of ``repo`` at ``revision`` (default ``main``), or None; never the network."""
    from huggingface_hub import snapshot_download

    try:
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # huggingface_hub < 0.23
        from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        path = snapshot_download(
            repo, revision=revision, cache_dir=str(cache_directory(cache_dir)), local_files_only=True
        )
    except (LocalEntryNotFoundError, FileNotFoundError):  # IncompleteSnapshotError is one of them
        return None
    return Path(path)


def resolve(
    name: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """The local snapshot directory of hub name ``name`` (an alias in :data:`TL_ALIASES` is its repository).

    The cache first; when it lacks the snapshot, or the snapshot lacks config.json or weights, download the
    files lens reads unless ``local_files_only=True`` or ``HF_HUB_OFFLINE`` is set (``FileNotFoundError``
    naming the cache directory and the command that fetches the model).
    """
    if not isinstance(name, str):
        raise TypeError(f"a hub name must be a str, got {type(name).__name__}")
    check_arguments(revision, cache_dir, local_files_only)
    repo = hub_name(name)
    cache = cache_directory(cache_dir)
    given = name.removeprefix("hf://")
    lacking: tuple[Path, list[str]] | None = None
    for candidate in dict.fromkeys([repo, given]):  # a legacy id ("gpt2") may be cached under its own name
        if not _REPO_ID.match(candidate):
            continue
        snapshot = cached_snapshot(candidate, revision, cache)
        if snapshot is None:
            continue
        missing = _missing_weights(snapshot)
        if missing is None:
            return snapshot
        lacking = lacking or (snapshot, missing)
    at = f" at revision {revision!r}" if revision else ""
    alias = f" ({name!r} is TransformerLens's name for it)" if repo != given else ""
    if local_files_only or offline():
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        found = (
            f"its cached snapshot {lacking[0]} lacks {lacking[1][:5]}"
            if lacking
            else f"it is not in the Hugging Face cache {cache}{at}"
        )
        raise FileNotFoundError(
            f"{name!r} is not a local directory, and {found}; {why}, so lens does not download. "
            f"Fetch {repo}{alias} with {_fetch_command(repo, revision, cache_dir)}, or pass a local directory"
        )
    return _download(repo, revision, cache, name)


def _download(repo: str, revision: str | None, cache: Path, name: str) -> Path:
    """Fetch config.json, the tokenizer files and one set of weights of ``repo`` into ``cache``."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    try:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:  # huggingface_hub < 0.23
        from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError

    at = f" at revision {revision!r}" if revision else ""
    try:
        info = HfApi().model_info(repo, revision=revision)
        files = {s.rfilename for s in info.siblings or ()}
        if "config.json" not in files:
            raise FileNotFoundError(f"{repo}{at} has no config.json; lens loads Hugging Face-format checkpoints")
        wanted = [f for f in METADATA_FILES if f in files]
        if SAFETENSORS in files:
            wanted.append(SAFETENSORS)
        elif SAFETENSORS_INDEX in files or (TORCH_BIN_INDEX in files and TORCH_BIN not in files):
            index = SAFETENSORS_INDEX if SAFETENSORS_INDEX in files else TORCH_BIN_INDEX
            path = hf_hub_download(repo, index, revision=revision, cache_dir=str(cache))
            wanted += [index, *_shards(Path(path))]
        elif TORCH_BIN in files:
            wanted.append(TORCH_BIN)
        else:
            raise FileNotFoundError(
                f"{repo}{at} has no weights lens reads ({SAFETENSORS}, {SAFETENSORS_INDEX}, {TORCH_BIN} "
                f"or {TORCH_BIN_INDEX}); its files: {sorted(files)[:10]}"
            )
        return Path(snapshot_download(repo, revision=revision, cache_dir=str(cache), allow_patterns=wanted))
    except RevisionNotFoundError as e:  # before RepositoryNotFoundError: older versions subclass it
        raise FileNotFoundError(f"{repo} has no revision {revision!r} (branch, tag or commit hash): {e}") from e
    except RepositoryNotFoundError as e:  # also gated and private repositories without a token
        raise FileNotFoundError(
            f"{name!r} is not a local directory, and the hub has no model {repo!r} you can read "
            f"(private or gated? log in with `hf auth login`): {e}"
        ) from e
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # connection errors, hub downtime: nothing in the cache either
        raise FileNotFoundError(
            f"{name!r} is not a local directory, it is not in the Hugging Face cache {cache}{at}, and downloading "
            f"{repo} failed ({type(e).__name__}: {e}). Fetch it with {_fetch_command(repo, revision, None)}"
        ) from e
