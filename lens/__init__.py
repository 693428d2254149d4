"""lens: a mechanistic interpretability toolkit for PyTorch.

Open a transformer, read or rewrite any activation through named hooks, patch activations between
runs and sample text — with logits equal to Hugging Face's for the same weights.

>>> import lens
>>> cfg = lens.TransformerConfig(n_layers=2, d_model=64, n_heads=4, d_vocab=259, n_ctx=128)
>>> model = lens.HookedTransformer(cfg, tokenizer=lens.Tokenizer.byte_level())
>>> logits, cache = model.run_with_cache("Hello lens")
"""

from lens import repro, utils, zoo
from lens.analysis import ActivationCache
from lens.config import TransformerConfig
from lens.factored_matrix import FactoredMatrix
from lens.hooks import HookedRootModule, HookPoint
from lens.model import HookedTransformer
from lens.tl_config import HookedTransformerConfig
from lens.tokenizer import Tokenizer
from lens.tools import attribution, head_detectors, logit_lens, patching
from lens.tools.patching import PatchingResult

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "FactoredMatrix",
    "HookPoint",
    "HookedRootModule",
    "HookedTransformer",
    "HookedTransformerConfig",
    "PatchingResult",
    "Tokenizer",
    "TransformerConfig",
    "attribution",
    "head_detectors",
    "logit_lens",
    "patching",
    "repro",
    "utils",
    "zoo",
]
