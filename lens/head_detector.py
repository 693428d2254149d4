"""TransformerLens's module path: ``lens.head_detector`` is :mod:`lens.tools.head_detector` (the same module object).

So ``from transformer_lens.head_detector import detect_head`` becomes ``from lens.head_detector import detect_head``.
"""

import sys

from lens.tools import head_detector as _module

sys.modules[__name__] = _module
