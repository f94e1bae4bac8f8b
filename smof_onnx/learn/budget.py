"""Moved to :mod:`smof_onnx.selection.budget` (torch-free); this name stays for the callers that
still import it from here."""
from __future__ import annotations

from ..selection.budget import *  # noqa: F401,F403
from ..selection.budget import __all__  # noqa: F401
