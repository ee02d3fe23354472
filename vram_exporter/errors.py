"""The errors a person can act on, one family: what was given, and why it cannot be used.

Only these become exit code 2 (bad input) and a one-line message; any other exception is a bug and
keeps its traceback. pydantic validators keep raising plain ValueError (pydantic's own contract);
their messages reach the user as an ``InputFileError`` naming the file, line and field.
"""

from __future__ import annotations


class BadInput(ValueError):
    """Input that cannot be used; ``str()`` says what to change."""


class FlagError(BadInput):
    """A command-line flag, alone or with another."""


class ModelError(BadInput):
    """A model the rulebooks cannot judge (a parameter GPUStack or vLLM refuses, a config.json field
    missing...). It never stops the exporter: the model shows vram_model_config_error 1 and why."""


class UpstreamError(BadInput):
    """A service this program reads (GPUStack's API) could not be read; the message says what to fix
    (the URL, the key, the network), so to the command line it is input to correct, exit code 2."""
