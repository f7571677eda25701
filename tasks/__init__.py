"""Prefect tasks: thin, typed wrappers around the plain-Python cores, one module per stage."""
