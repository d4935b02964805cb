"""Exceptions that name the problem. All user-facing errors derive from AHNError."""

from __future__ import annotations


class AHNError(Exception):
    """Base of the errors ahn-gguf raises for bad input (the CLI prints them without a traceback)."""


class AHNModelError(AHNError, ValueError):
    """A model file or model option that cannot be used (not GGUF, corrupted, inconsistent, bad W/S)."""


class GGUFFormatError(AHNModelError):
    """A file that is not a well-formed GGUF."""


class UsageError(AHNError, ValueError):
    """An option, argument or setting that cannot be used (a wrong value, a missing companion option)."""


class MissingFileError(AHNError, FileNotFoundError):
    """A file or folder the user named (or an installation must hold) is not there."""


class ExistingOutputError(AHNError, FileExistsError):
    """An output that would overwrite earlier work (a run's checkpoint) without being asked to."""


class SetupError(AHNError, ImportError):
    """The installation lacks a piece (the patched llama-cpp-python, an optional dependency)."""


class ConversionError(AHNError, ValueError):
    """A checkpoint, GGUF file or option the converter refuses; the message names the problem.

    Raised during validation, before any output is written (the output is written to a
    temporary file and renamed at the end, so a later failure leaves nothing behind either).
    """
