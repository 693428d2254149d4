"""Text generation: KV-cached ``generate`` with Hugging Face-exact logits processing, sampling and beams.

``HookedTransformer`` inherits :class:`GenerationMixin` (``generate``, ``generate_stream``); the
pieces are importable on their own: :class:`KVCache` (preallocated, ring buffers for sliding-window
layers, optional int8), the samplers in :mod:`lens.generation.sampling`, beam search in
:mod:`lens.generation.beam`. See docs/generation.md.

>>> from lens.generation import KVCache
>>> cache = KVCache.for_model(model, batch=1, max_len=32)
>>> logits = model(tokens, past_kv_cache=cache)
"""

from lens.generation.generate import GenerationMixin, GenerationOutput
from lens.generation.kv_cache import KVCache
from lens.generation.plan import check_context

__all__ = ["GenerationMixin", "GenerationOutput", "KVCache", "check_context"]
