"""Small models trained by this repo and shipped inside the package (no network).

>>> from lens import zoo
>>> zoo.list_models()
['attn-only-2l', 'gelu-4l']
>>> model = zoo.load("attn-only-2l")            # weights checked against their recorded SHA-256
>>> zoo.info("attn-only-2l")["held_out_loss"]

Each model is described by ``weights/NAME.json`` (config, training recipe, loss curve, held-out loss,
per-head induction scores, SHA-256 of the weights) beside ``weights/NAME.safetensors``; both are written
by ``python -m lens.zoo.train`` (see :mod:`lens.zoo.train`).

Sparse autoencoders trained on them ship as ``saes/NAME/`` (SAELens's format plus ``zoo.json``, the training
report with held-out metrics and the weights' SHA-256), written by ``python -m lens.zoo.train_sae``:

>>> zoo.list_saes()
['gelu-4l-resid1-topk16']
>>> sae = zoo.load_sae("gelu-4l-resid1-topk16")     # a lens.sae.SAE on blocks.1.hook_resid_post
>>> zoo.sae_info("gelu-4l-resid1-topk16")["eval"]["metrics"]["explained_variance"]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from lens.zoo.specs import SAE_SPECS, SPECS

WEIGHTS_DIR = Path(__file__).parent / "weights"
SAES_DIR = Path(__file__).parent / "saes"


def list_models() -> list[str]:
    """Names of the embedded models whose weights are present."""
    return [name for name in SPECS if (WEIGHTS_DIR / f"{name}.safetensors").exists()]


def _resolve(name_or_dir: str | Path) -> tuple[Path, Path]:
    if isinstance(name_or_dir, str) and name_or_dir in SPECS:
        base = WEIGHTS_DIR / name_or_dir
        weights, meta = base.with_suffix(".safetensors"), base.with_suffix(".json")
        if not weights.exists():
            raise FileNotFoundError(
                f"embedded model {name_or_dir!r} has no weights at {weights}; train it with "
                f"`python -m lens.zoo.train {name_or_dir}`"
            )
        return weights, meta
    path = Path(name_or_dir)
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1 and found[0].with_suffix(".json").exists():
            return found[0], found[0].with_suffix(".json")
    if path.suffix == ".safetensors" and path.with_suffix(".json").exists():
        return path, path.with_suffix(".json")
    raise ValueError(
        f"{str(name_or_dir)!r} is neither an embedded model ({list(SPECS)}) nor a lens zoo checkpoint "
        "(NAME.safetensors + NAME.json); for Hugging Face checkpoints use HookedTransformer.from_pretrained"
    )


def info(name_or_dir: str | Path) -> dict[str, Any]:
    """The training report of an embedded model (config, losses, induction scores, SHA-256)."""
    return json.loads(_resolve(name_or_dir)[1].read_text())


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load(
    name_or_dir: str | Path = "attn-only-2l",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    verify: bool = True,
):
    """Load an embedded model (or a zoo-format checkpoint) with lens's byte-level tokenizer attached.

    ``verify=True`` checks the weights' SHA-256 against the recorded one (ValueError on mismatch).
    """
    from safetensors.torch import load_file

    from lens import HookedTransformer, Tokenizer, TransformerConfig

    weights, meta_path = _resolve(name_or_dir)
    meta = json.loads(meta_path.read_text())
    if verify:
        actual = sha256_of(weights)
        if actual != meta["sha256"]:
            raise ValueError(f"{weights} has SHA-256 {actual}, but {meta_path.name} records {meta['sha256']}")
    fields = dict(meta["config"])
    if dtype is not None:
        fields["dtype"] = dtype
    fields["device"] = device
    cfg = TransformerConfig.from_dict(fields)
    model = HookedTransformer(cfg, tokenizer=Tokenizer.byte_level(), init=False)
    state = load_file(str(weights))
    if cfg.tie_word_embeddings:
        state["unembed.weight"] = state["embed.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    from lens import provenance

    provenance.record(
        model, "zoo", name=meta["name"], path=str(Path(weights).absolute()), file_sha256=meta["sha256"],
        dtype=None if dtype is None else str(dtype).removeprefix("torch."),
    )  # fmt: skip
    return model.eval()


def list_saes() -> list[str]:
    """Names of the embedded SAEs whose weights are present."""
    return [n for n in SAE_SPECS if (SAES_DIR / n / "sae_weights.safetensors").exists()]


def _sae_folder(name: str) -> Path:
    if name not in SAE_SPECS:
        raise ValueError(f"{name!r} is not an embedded SAE; choose from {list(SAE_SPECS)}")
    folder = SAES_DIR / name
    if not (folder / "sae_weights.safetensors").exists():
        raise FileNotFoundError(f"embedded SAE {name!r} has no weights in {folder}; train it with "
                                f"`python -m lens.zoo.train_sae {name}`")  # fmt: skip
    return folder


def sae_info(name: str) -> dict[str, Any]:
    """The training report of an embedded SAE (recipe, held-out metrics, SHA-256 of its weights)."""
    return json.loads((_sae_folder(name) / "zoo.json").read_text())


def load_sae(name: str, device: str | torch.device | None = None, dtype: str | None = None, verify: bool = True):
    """Load an embedded SAE as a :class:`lens.sae.SAE` (attach it to ``load(sae_info(name)["model"])``).

    ``verify=True`` checks the weights' SHA-256 against the recorded one (ValueError naming the file on mismatch).

    >>> model, sae = load("gelu-4l"), load_sae("gelu-4l-resid1-topk16")
    >>> with model.saes([sae]):
    ...     _, cache = model.run_with_cache("def f(x):")
    """
    import lens.sae

    folder = _sae_folder(name)
    if verify:
        meta = sae_info(name)
        actual = sha256_of(folder / "sae_weights.safetensors")
        if actual != meta["sha256"]:
            raise ValueError(f"{folder / 'sae_weights.safetensors'} has SHA-256 {actual}, but zoo.json records "
                             f"{meta['sha256']}")  # fmt: skip
    return lens.sae.load(folder, device=device, dtype=dtype)


__all__ = ["info", "list_models", "list_saes", "load", "load_sae", "sae_info"]
