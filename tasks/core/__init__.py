"""Prefect-free compositions that tasks and the CLI share: the environment (store, cache) and multi-stage steps."""
