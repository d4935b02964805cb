"""Benchmarks (`ahn-gguf bench ...`): each one a module with run(args) -> dict and a report writer."""
