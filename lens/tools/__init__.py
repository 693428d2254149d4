"""Interpretability tools built on a model's public methods (``run_with_cache``, ``run_with_hooks``, ...).

- :mod:`~lens.tools.patching`: activation patching (batched, per position / head), ``PatchingResult``.
- :mod:`~lens.tools.attribution`: attribution patching (gradient approximation of patching).
- :mod:`~lens.tools.logit_lens`: the logit lens over the residual stream.
- :mod:`~lens.tools.head_detectors`: previous-token, duplicate-token and induction head scores.
- :mod:`~lens.tools.head_detector`: TransformerLens's ``detect_head`` API (one prompt, ``mul``/``abs`` scores).
- :mod:`~lens.tools.plot`: plotly figures for all of the above.

The old paths (``lens.patching``, ``lens.plot``, ...) name the same modules. No module of the core
(hooks, components, model, generation, analysis) imports from here.

>>> from lens.tools import patching
"""
