"""The two kinds of input error a command reports in one line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override that names an unknown key or holds a value of the wrong type."""


class BadInput(ValueError):
    """Something the config names that cannot be used: a missing model, a dataset with no usable rows, an
    adapter that does not fit, a folder that cannot be written."""
