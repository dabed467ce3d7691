"""The errors mathforge raises for bad input: each names the file, line, key or value at fault.

The CLI prints a `MathforgeError`'s message without a traceback and exits non-zero; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class MathforgeError(Exception):
    """Base class: an error the user can act on."""


class ConfigError(MathforgeError, ValueError):
    """A bad option, config key or config value."""


class DataError(MathforgeError, ValueError):
    """Bad or missing input data (a file, a row, a field, a data set name)."""


class PackingError(MathforgeError, ValueError):
    """Items that cannot be packed as asked (e.g. longer than a bin under policy="error")."""
