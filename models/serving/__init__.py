"""Serving: the OpenAI-compatible HTTP app, its engine over the registry's aliased model, and traffic capture."""
from llmops.models.serving.app import ServerHandle, create_app, serve, start_server
from llmops.models.serving.guard import InsecureBind

__all__ = [
    "InsecureBind", "ServerHandle", "create_app", "serve", "start_server",
]
