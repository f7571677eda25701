"""Prefect flows users run, schedule and trigger, their deployments, and the `llmops` CLI."""
