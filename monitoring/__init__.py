"""Drift monitoring in plain Python: signals, reference profiles, statistics, reports, alert policy."""
