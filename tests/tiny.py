"""The one builder of tiny test models: lens configs by shape, and Hugging Face models (the oracle).

Hugging Face models come from the tiny configs the families declare (``Adapter.tiny``, gathered by
:func:`lens.families.tiny_configs`), so a new family file is built, saved and compared without test
edits. Weights are re-drawn at O(1) scale (matrices ~ N(0, 1/fan), 1-D tensors = init + 0.1 N(0, 1)):
logits are O(1), so a parity check at atol 1e-4 means something, and greedy ties are vanishingly rare.

>>> hf = hf_model("llama3")                      # a declared variant (or a family / class name)
>>> directory, hf = saved("gpt2")                  # the same, saved to disk once per session
>>> hf, model = pair("LlamaForCausalLM")          # generation settings: eos token, 97-token vocabulary
>>> model = tiny_model("llama")                    # a lens-only model in a family's shape
"""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

import lens
from lens.families import ADAPTERS, config_from_hf, tiny_configs
from lens.families.base import TINY_VOCAB

VOCAB = 97  # lens-config shapes (tiny_cfg / tiny_model)
HF_VOCAB = TINY_VOCAB  # the families' tiny Hugging Face models
GEN_VOCAB, EOS = 97, 2  # generation tests: token ids 3..96, eos 2

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = tiny_configs()  # variant -> (model class, config kwargs)


# -- lens-only models ---------------------------------------------------------------------------------
def tiny_cfg(family: str, **overrides) -> lens.TransformerConfig:
    """A tiny lens config in the shape of ``family`` (gpt2, llama, mistral, neox-like, attn_only)."""
    base = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=VOCAB, n_ctx=64)
    fam = {
        "gpt2": dict(act_fn="gelu_new", normalization="LN", positional="learned"),
        "llama": dict(
            act_fn="silu", normalization="RMS", positional="rotary", n_key_value_heads=2,
            gated_mlp=True, qkv_bias=False, attn_out_bias=False, mlp_bias=False, d_mlp=48,
        ),
        "mistral": dict(
            act_fn="silu", normalization="RMS", positional="rotary", n_key_value_heads=2,
            gated_mlp=True, qkv_bias=False, attn_out_bias=False, mlp_bias=False, d_mlp=48, window_size=5,
        ),
        "neox": dict(act_fn="gelu", normalization="LN", positional="rotary", rotary_dim=4, parallel_attn_mlp=True),
        "attn_only": dict(attn_only=True, normalization="LN", positional="learned"),
    }[family]  # fmt: skip
    base.update(fam)
    base.update(overrides)
    return lens.TransformerConfig(**base)


def tiny_model(family: str, seed: int = 0, **overrides) -> lens.HookedTransformer:
    return model_for(tiny_cfg(family, **overrides), seed)


def model_for(cfg: lens.TransformerConfig, seed: int = 0) -> lens.HookedTransformer:
    """A random-weight lens model of ``cfg`` whose norm weights and biases are not the identity."""
    model = lens.HookedTransformer(cfg, seed=seed)
    # Random init with non-trivial norm weights/biases so tests exercise them.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b", "bias")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


# -- the families' tiny Hugging Face models -----------------------------------------------------------
def variants() -> list[str]:
    """Every declared tiny variant (``gpt2``, ``llama3``, ``neox-seq``, ...)."""
    return list(FAMILIES)


def spec(name: str) -> tuple[str, dict[str, Any]]:
    """(model class, config kwargs) of a variant, a family (its first variant) or a model class."""
    if name in FAMILIES:
        cls, kwargs = FAMILIES[name]
        return cls, copy.deepcopy(kwargs)
    for adapter in ADAPTERS:
        for cls, kwargs in adapter.tiny.values():
            if name in (adapter.name, cls) or name in adapter.model_types:
                return cls, copy.deepcopy(kwargs)
    raise ValueError(f"no tiny model declared for {name!r}; variants: {variants()}")


def lens_config(name: str) -> lens.TransformerConfig:
    """The lens config a variant loads as (no weights built)."""
    transformers = pytest.importorskip("transformers")
    cls, kwargs = spec(name)
    return config_from_hf(getattr(transformers, cls).config_class(**kwargs))[1]


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():  # tied weights appear once
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim == 1:
            p.add_(0.1 * noise)
        else:
            p.copy_(noise / p.shape[-1] ** 0.5)
    return model


def build_hf(model_spec: str | tuple[str, dict], seed: int = 0, **overrides) -> torch.nn.Module:
    """A random-weight ``transformers`` model in eval mode: ``model_spec`` is a name (see :func:`spec`) or
    (model class name, config kwargs); ``overrides`` change config kwargs."""
    transformers = pytest.importorskip("transformers")
    model_cls, kwargs = spec(model_spec) if isinstance(model_spec, str) else model_spec
    cls = getattr(transformers, model_cls, None)
    if cls is None:
        pytest.skip(f"transformers has no {model_cls}")
    torch.manual_seed(seed)
    model = cls(cls.config_class(**{**kwargs, **overrides}))
    return randomize(model, seed).eval()


def hf_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random-weight ``transformers`` model of a variant or family (``"gpt2"``, ``"llama"``, ...)."""
    return build_hf(family, seed, **overrides)


_ROOT = Path(tempfile.mkdtemp(prefix="lens-families-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
_SAVED: dict[tuple[str, torch.dtype], tuple[Path, torch.nn.Module]] = {}


def saved(
    name: str, model_spec: tuple[str, dict] | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Path, torch.nn.Module]:
    """(directory, HF model in ``dtype``) for a variant, built and saved once per session."""
    key = (name, dtype)
    if key not in _SAVED:
        fp32 = (name, torch.float32)
        base = _SAVED[fp32][1] if fp32 in _SAVED else build_hf(model_spec or name)
        model = base if dtype == torch.float32 else copy.deepcopy(base).to(dtype)
        directory = _ROOT / f"{name}-{str(dtype).removeprefix('torch.')}"
        model.save_pretrained(directory)
        _SAVED[key] = (directory, model)
    return _SAVED[key]


def reloaded(directory: Path, dtype: torch.dtype) -> torch.nn.Module:
    """``transformers``' own load of a saved directory in ``dtype`` (the reference for dtype handling)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()


def copy_dir(directory: Path, dest: Path) -> Path:
    """A private copy of a saved checkpoint that a test may damage."""
    shutil.copytree(directory, dest)
    return dest


def hf_tokens(batch: int = 2, pos: int = 16, seed: int = 1) -> torch.Tensor:
    """Token ids for the families' tiny models."""
    return torch.randint(0, HF_VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


# -- generation: one model per architecture -----------------------------------------------------------
def archs() -> list[str]:
    """Every architecture in ``lens.families.ADAPTERS``."""
    return [arch for adapter in ADAPTERS for arch in adapter.architectures]


def hf_tiny(arch: str, seed: int = 0, window: int = 5, **overrides) -> torch.nn.Module:
    """The family's tiny model of ``arch`` with generation settings: a 97-token vocabulary, eos 2, bos 1,
    no padding token, 64 positions, untied embeddings and a ``window``-token sliding window where the
    family has one (settings a family does not know are dropped: a stray ``sliding_window`` changes
    HF's cache)."""
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, arch, None)
    if cls is None:
        pytest.skip(f"transformers has no {arch}")
    _, kwargs = spec(arch)
    settings = dict(
        vocab_size=GEN_VOCAB, bos_token_id=1, eos_token_id=EOS, pad_token_id=None, max_position_embeddings=64,
        n_positions=64, sliding_window=window, tie_word_embeddings=False,
    )  # fmt: skip
    known = cls.config_class()
    kwargs.update({k: v for k, v in settings.items() if hasattr(known, k) or k in known.attribute_map})
    if isinstance(kwargs.get("text_config"), dict):  # a composite (multimodal) config: its language model's too
        text, known = kwargs["text_config"], known.get_text_config()
        text.update({k: v for k, v in settings.items() if hasattr(known, k) or k in known.attribute_map})
    return build_hf((arch, kwargs), seed, **overrides)


def pair(arch: str, seed: int = 0, **overrides):
    """(hf model, lens model with the same weights)."""
    from lens.loading import from_hf_model

    hf = hf_tiny(arch, seed, **overrides)
    return hf, from_hf_model(hf, model_class=lens.HookedTransformer).eval()
