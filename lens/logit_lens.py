"""Moved to :mod:`lens.tools.logit_lens`; ``lens.logit_lens`` stays importable as the same module object."""

import sys

from lens.tools import logit_lens as _module

sys.modules[__name__] = _module
