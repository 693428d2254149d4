"""The building blocks of a lens transformer, one activation family per module.

- ``embed``: token / learned-position embeddings and the unembedding (``hook_embed``, ``hook_pos_embed``).
- ``norm``: LayerNorm and RMSNorm (``hook_scale``, ``hook_normalized``).
- ``rotary``: rotary position embedding tables, computed lazily for the positions in use.
- ``masking``: per-forward causal / sliding-window / padding masks (nothing sized by ``n_ctx``).
- ``attention``: q/k/v/z, scores and pattern, fused SDPA path when unhooked.
- ``mlp``: plain and gated MLPs (``hook_pre``, ``hook_pre_linear``, ``hook_post``).
- ``block``: one residual block wiring them together (``hook_resid_pre``/``mid``/``post``, ...).
"""

from lens.components.attention import Attention
from lens.components.block import TransformerBlock
from lens.components.embed import Embed, PosEmbed, Unembed
from lens.components.masking import AttentionContext
from lens.components.mlp import MLP
from lens.components.norm import LayerNorm, RMSNorm, make_norm
from lens.components.rotary import Rotary

__all__ = [
    "Attention",
    "AttentionContext",
    "Embed",
    "LayerNorm",
    "MLP",
    "PosEmbed",
    "RMSNorm",
    "Rotary",
    "TransformerBlock",
    "Unembed",
    "make_norm",
]
