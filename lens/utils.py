"""Utilities with TransformerLens 2.x's names and behaviour (``transformer_lens.utils`` -> ``lens.utils``).

Everything public here is re-exported from one concern-per-module home in :mod:`lens.utilities`:

- names and loss: ``get_act_name`` (:mod:`lens.names`), ``lm_cross_entropy_loss`` (here), ``lm_accuracy``;
- slicing: ``Slice``, ``SliceInput`` (the ``pos_slice=`` argument of ``ActivationCache`` methods);
- tensors: ``to_numpy``, ``get_corner``, ``transpose``, ``is_square``, ``is_lower_triangular``,
  ``check_structure``, ``remove_batch_dim``, ``get_cumsum_along_dim``, ``repeat_along_head_dimension``,
  ``composition_scores``;
- initialisation: ``calc_fan_in_and_fan_out``, ``init_xavier_uniform_`` / ``_normal_``,
  ``init_kaiming_uniform_`` / ``_normal_``;
- activations: ``gelu_new``, ``gelu_fast``, ``gelu_pytorch_tanh``, ``solu``, ``xielu``, ``XIELU``,
  ``ACTIVATION_FN_DICT``;
- tokens: ``get_offset_position_ids``, ``get_attention_mask``, ``get_input_with_manually_prepended_bos``,
  ``get_tokens_with_bos_removed``, ``get_tokenizer_with_bos``;
- prompts: ``test_prompt``, ``sample_logits``;
- data (needs ``datasets``): ``tokenize_and_concatenate``, ``keep_single_column``, ``get_dataset``;
- environment: ``get_device``, ``print_gpu_mem``, ``is_library_available``, ``select_compatible_kwargs``,
  ``download_file_from_hf``, ``clear_huggingface_cache``, ``warn_if_mps``, ``CACHE_DIR``,
  ``get_nested_attr``, ``set_nested_attr``, ``override_or_use_default_value``, ``USE_DEFAULT_VALUE``,
  ``LocallyOverridenDefaults``;
- lens only: ``keep_freed_memory``, ``release_freed_memory``.

>>> get_act_name("pattern", 3)
'blocks.3.attn.hook_pattern'
>>> get_act_name("scale4ln1")
'blocks.4.ln1.hook_scale'
>>> Slice(-1).apply(torch.zeros(2, 5, 3), dim=-2).shape
torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from lens.factored_matrix import FactoredMatrix  # noqa: F401  (transformer_lens.utils exposes it too)
from lens.names import get_act_name
from lens.utilities.activations import ACTIVATION_FN_DICT, XIELU, gelu_fast, gelu_new, gelu_pytorch_tanh, solu, xielu
from lens.utilities.data import get_dataset, keep_single_column, tokenize_and_concatenate
from lens.utilities.initialization import (
    calc_fan_in_and_fan_out,
    init_kaiming_normal_,
    init_kaiming_uniform_,
    init_xavier_normal_,
    init_xavier_uniform_,
)
from lens.utilities.misc import (
    CACHE_DIR,
    USE_DEFAULT_VALUE,
    LocallyOverridenDefaults,
    clear_huggingface_cache,
    download_file_from_hf,
    get_device,
    get_nested_attr,
    is_library_available,
    override_or_use_default_value,
    print_gpu_mem,
    select_compatible_kwargs,
    set_nested_attr,
    warn_if_mps,
)
from lens.utilities.prompts import lm_accuracy, sample_logits, test_prompt
from lens.utilities.slicing import Slice, SliceInput
from lens.utilities.tensors import (
    check_structure,
    composition_scores,
    get_corner,
    get_cumsum_along_dim,
    is_lower_triangular,
    is_square,
    remove_batch_dim,
    repeat_along_head_dimension,
    to_numpy,
    transpose,
)
from lens.utilities.tokens import (
    get_attention_mask,
    get_input_with_manually_prepended_bos,
    get_offset_position_ids,
    get_tokenizer_with_bos,
    get_tokens_with_bos_removed,
)

__all__ = [
    "ACTIVATION_FN_DICT", "CACHE_DIR", "USE_DEFAULT_VALUE", "XIELU", "LocallyOverridenDefaults", "Slice",
    "SliceInput", "calc_fan_in_and_fan_out", "check_structure", "clear_huggingface_cache", "composition_scores",
    "download_file_from_hf", "gelu_fast", "gelu_new", "gelu_pytorch_tanh", "get_act_name", "get_attention_mask",
    "get_corner", "get_cumsum_along_dim", "get_dataset", "get_device", "get_input_with_manually_prepended_bos",
    "get_nested_attr", "get_offset_position_ids", "get_tokenizer_with_bos", "get_tokens_with_bos_removed",
    "init_kaiming_normal_",
    "init_kaiming_uniform_", "init_xavier_normal_", "init_xavier_uniform_", "is_library_available",
    "is_lower_triangular", "is_square", "keep_freed_memory", "keep_single_column", "lm_accuracy",
    "lm_cross_entropy_loss", "override_or_use_default_value", "print_gpu_mem", "release_freed_memory",
    "remove_batch_dim",
    "repeat_along_head_dimension", "sample_logits", "select_compatible_kwargs", "set_nested_attr", "solu",
    "test_prompt", "to_numpy", "tokenize_and_concatenate", "transpose", "warn_if_mps", "xielu",
]  # fmt: skip


def lm_cross_entropy_loss(
    logits: Float[torch.Tensor, "batch pos vocab"],
    tokens: Int[torch.Tensor, "batch pos"],
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    per_token: bool = False,
) -> Float[torch.Tensor, ""] | Float[torch.Tensor, "batch pos_minus_1"]:
    """Next-token cross-entropy: position i predicts token i+1.

    With ``attention_mask`` (left or right padding), predictions whose target or source is padding
    are excluded from the mean (and are 0 in the per-token result). Needs at least 2 positions (one
    prediction with its target); fewer raise ValueError instead of returning the nan mean of nothing.

    >>> lm_cross_entropy_loss(torch.zeros(1, 3, 5), torch.tensor([[0, 1, 2]]))  # uniform over 5: log 5
    tensor(1.6094)
    """
    if logits.ndim != 3 or tokens.ndim != 2:
        raise ValueError(
            f"logits must be [batch, pos, vocab] and tokens [batch, pos], got shapes {tuple(logits.shape)} and "
            f"{tuple(tokens.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"the loss needs at least 2 positions (position i predicts token i+1), got {logits.shape[1]}")
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = tokens[:, 1:].to(log_probs.device)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if attention_mask is None:
        return nll if per_token else nll.mean()
    m = attention_mask.to(nll.device).bool()
    valid = (m[:, 1:] & m[:, :-1]).to(nll.dtype)
    nll = nll * valid
    if per_token:
        return nll
    return nll.sum() / valid.sum().clamp_min(1)


def _libc_trim() -> Callable[[], int] | None:
    try:
        import ctypes
        import ctypes.util

        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to do
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


_TRIM = _libc_trim()
_KEEPING_FREED = False  # set by keep_freed_memory(): the user asked for freed memory to stay


def release_freed_memory() -> None:
    """Return freed heap memory to the operating system (glibc's ``malloc_trim``; a no-op elsewhere, and after
    :func:`keep_freed_memory`).

    Why: glibc raises its mmap threshold after the first large free, so later buffers of that size come from
    the heap (and from per-thread arenas) and stay resident once freed. Code that frees a large buffer over
    and over (offloaded weights and blocks in :mod:`lens.placement`, the activation store's shards) calls this
    after each, so its peak stays at what is live plus one transient instead of creeping upwards.

    >>> lens.utils.release_freed_memory()
    """
    if _TRIM is not None and not _KEEPING_FREED:
        _TRIM()


def keep_freed_memory(max_bytes: int = 8 * 2**30) -> bool:
    """Opt-in: ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    Why: by default glibc hands large freed blocks back to the OS, so the next allocation of that size
    page-faults and zero-fills them again. ``run_with_cache`` already avoids this for cached activations
    (:mod:`lens.activation_pool`); this goes further, for every allocation of the process up to 32 MiB
    (the mmap threshold is pinned there, the trim threshold raised to ``max_bytes``). The process then keeps
    its peak resident memory instead of shrinking. Process-wide, so lens never does this by itself. Returns
    False where it does not apply (not glibc); the environment variables ``MALLOC_TRIM_THRESHOLD_`` and
    ``MALLOC_MMAP_THRESHOLD_`` do the same.

    >>> lens.utils.keep_freed_memory()
    True
    """
    import ctypes
    import ctypes.util

    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    # Setting the trim threshold turns off glibc's dynamic mmap threshold, which would leave every block
    # over 128 KiB to mmap/munmap (page faults on each allocation): pin it at glibc's 32 MiB maximum.
    if not mallopt(m_mmap_threshold, ctypes.c_int(32 * 2**20)):
        return False
    global _KEEPING_FREED
    _KEEPING_FREED = bool(mallopt(m_trim_threshold, ctypes.c_int(min(max_bytes, 2**31 - 1))))
    return _KEEPING_FREED
