"""Serving: the OpenAI-compatible HTTP app, its engine over the registry's aliased model, and traffic capture."""
from llmops.models.serving.app import create_app
from llmops.models.serving.guard import InsecureBind
from llmops.models.serving.server import ServerHandle, serve, start_server

__all__ = [
    "InsecureBind", "ServerHandle", "create_app", "serve", "start_server",
]
