"""The one exception the converter raises for anything the user can fix."""

from __future__ import annotations

from ahn_gguf.errors import AHNError


class ConversionError(AHNError, ValueError):
    """A checkpoint, GGUF file or option the converter refuses; the message names the problem.

    Raised during validation, before any output is written (the output is written to a
    temporary file and renamed at the end, so a later failure leaves nothing behind either).
    """
