"""Moved to :mod:`lens.families.mistral`; ``lens.adapters.mistral`` stays importable as the same module object."""

import sys

from lens.families import mistral as _module

sys.modules[__name__] = _module
