"""Serving: the OpenAI-compatible HTTP app, its engine over the registry's aliased model, and traffic capture."""
