"""Moved to :mod:`lens.tools.head_detectors`; ``lens.head_detectors`` stays importable as the same module object."""

import sys

from lens.tools import head_detectors as _module

sys.modules[__name__] = _module
