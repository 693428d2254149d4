"""Cached activations and what researchers compute from them.

- :mod:`lens.analysis.cache`: :class:`ActivationCache`, the dict-like result of ``run_with_cache``
  (TransformerLens keys and shorthands).
- :mod:`lens.analysis.residual`: residual-stream decomposition, norm replay and logit attribution
  (the methods ``ActivationCache`` inherits).

This layer reads a model only through its public attributes (``cfg``, ``blocks``, ``W_U``, ...) and never
imports :mod:`lens.model`.

>>> from lens.analysis import ActivationCache
"""

from lens.analysis.cache import ActivationCache
from lens.analysis.residual import ActivationCacheAnalysisMixin

__all__ = ["ActivationCache", "ActivationCacheAnalysisMixin"]
