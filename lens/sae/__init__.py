"""Sparse autoencoders and transcoders: :class:`SAE`, :class:`SAEConfig`, :func:`load`, :func:`train`,
:func:`evaluate` (docs/sae.md).

Attach to a model with ``model.add_sae(sae)`` / ``with model.saes([sae]):`` / ``model.reset_saes()``
(:mod:`lens.sae.attach`).

Layers (tests/test_architecture.py): ``config``, ``modules``, ``formats``, ``attach`` sit with the components;
``loading`` (hub names) with :mod:`lens.loading`; ``evaluate`` with the tools; this package root and ``train``
(which reads activation stores) with the applications. As in :mod:`lens.store`, ``lens.sae.train`` and
``lens.sae.evaluate`` name the functions; their modules are ``sys.modules["lens.sae.train"]`` & co.

>>> sae = lens.sae.load("saes/gelu-4l-resid1")          # doctest: +SKIP
>>> with model.saes([sae]):                              # doctest: +SKIP
...     logits, cache = model.run_with_cache(tokens)
>>> cache["blocks.1.hook_resid_post.hook_sae_acts_post"].shape   # doctest: +SKIP
"""

from lens.sae.browser import feature_browser
from lens.sae.config import SAEConfig
from lens.sae.evaluate import evaluate
from lens.sae.features import (
    LogitEffects,
    TopActivations,
    activation_histogram,
    density_histogram,
    feature_density,
    logit_effects,
    logit_effects_figure,
    top_activations,
)
from lens.sae.loading import load
from lens.sae.modules import SAE
from lens.sae.train import train

__all__ = [
    "SAE",
    "LogitEffects",
    "SAEConfig",
    "TopActivations",
    "activation_histogram",
    "density_histogram",
    "evaluate",
    "feature_browser",
    "feature_density",
    "load",
    "logit_effects",
    "logit_effects_figure",
    "top_activations",
    "train",
]
