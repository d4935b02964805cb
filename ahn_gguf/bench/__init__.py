"""Benchmarks (`ahn-gguf bench ...`): each one a module with run(args) -> dict and a report writer."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def parsed_defaults(add_arguments: Callable[[argparse.ArgumentParser], None], name: str,
                    overrides: dict[str, Any]) -> argparse.Namespace:
    """A benchmark's command-line defaults with `overrides`, for calling it from Python."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([])
    for k, v in overrides.items():
        if not hasattr(args, k):
            raise TypeError(f"unknown bench {name} option {k!r}")
        setattr(args, k, v)
    return args
