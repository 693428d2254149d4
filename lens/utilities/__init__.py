"""The homes of :mod:`lens.utils`'s TransformerLens-compatible helpers, one concern per module.

Import them from :mod:`lens.utils` (``from lens.utils import Slice, to_numpy``); this package only
splits the code: :mod:`~lens.utilities.slicing`, :mod:`~lens.utilities.tensors`,
:mod:`~lens.utilities.initialization`, :mod:`~lens.utilities.activations`, :mod:`~lens.utilities.tokens`,
:mod:`~lens.utilities.prompts`, :mod:`~lens.utilities.data` (optional ``datasets``),
:mod:`~lens.utilities.misc` (devices, Hub cache, nested attributes, overridable defaults).
Base layer: imports torch, numpy and einops only, never a model (models are duck-typed).
"""
