"""What differs between the Python versions the agent supports (3.10, JetPack 6's, and later)."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

__all__ = ["tomllib"]
