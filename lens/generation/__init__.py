"""Text generation: KV-cached ``generate`` with Hugging Face-exact logits processing, sampling and beams.

A layer above the model's public methods, never below: the loops call ``model.decode_step`` (one
forward through the ordinary modules), ``model.hooks``, ``model.to_tokens`` and ``model.check_tokens``,
and import nothing from :mod:`lens.model`. ``HookedTransformer.generate`` / ``generate_stream`` are thin
methods over :func:`generate` / :func:`generate_stream`.

- :mod:`~lens.generation.config`: :class:`GenerationConfig`, every setting validated once.
- :mod:`~lens.generation.plan`: per-call checks against the model, prompt preparation, output formatting.
- :mod:`~lens.generation.generate`: the greedy / sampling loop and streaming.
- :mod:`~lens.generation.beam`: beam search as ``transformers`` runs it.
- :mod:`~lens.generation.sampling`: HF's logits processors as pure functions.
- :mod:`~lens.generation.kv_cache`: :class:`KVCache` (preallocated, ring buffers, optional int8).
- :mod:`~lens.generation.record`: ``return_cache`` across steps.

>>> from lens.generation import GenerationConfig, KVCache
>>> cache = KVCache.for_model(model, batch=1, max_len=32)
>>> logits = model.decode_step(prompt_tokens, cache)          # prefill: last-position logits
>>> logits = model.decode_step(next_token[:, None], cache)    # one decode step
"""

from lens.generation.config import GenerationConfig
from lens.generation.generate import GenerationOutput, generate, generate_stream
from lens.generation.kv_cache import KVCache
from lens.generation.plan import check_context

__all__ = ["GenerationConfig", "GenerationOutput", "KVCache", "check_context", "generate", "generate_stream"]
