"""Exceptions that name the problem. All user-facing errors derive from AHNError."""

from __future__ import annotations


class AHNError(Exception):
    """Base of the errors ahn-gguf raises for bad input (the CLI prints them without a traceback)."""


class AHNModelError(AHNError, ValueError):
    """A model file or model option that cannot be used (not GGUF, corrupted, inconsistent, bad W/S)."""


class GGUFFormatError(AHNModelError):
    """A file that is not a well-formed GGUF."""
