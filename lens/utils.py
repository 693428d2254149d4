"""Small shared utilities: TransformerLens-style activation names (from :mod:`lens.names`) and loss helpers.

>>> get_act_name("pattern", 3)
'blocks.3.attn.hook_pattern'
>>> get_act_name("scale", 2, "ln1")
'blocks.2.ln1.hook_scale'
>>> get_act_name("resid_post", 5)
'blocks.5.hook_resid_post'
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from lens.names import get_act_name

__all__ = ["get_act_name", "keep_freed_memory", "lm_cross_entropy_loss"]


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
        raise ValueError(
            f"the loss needs at least 2 positions (position i predicts token i+1), got {logits.shape[1]}"
        )
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
    return bool(mallopt(m_trim_threshold, ctypes.c_int(min(max_bytes, 2**31 - 1))))
