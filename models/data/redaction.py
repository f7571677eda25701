"""Redaction of captured prompts before they become training data: configured patterns, then an optional hook."""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Optional

from llmops.infra.config import RedactSettings

Hook = Callable[[str], Optional[str]]


class RedactionError(ValueError):
    """The redaction hook cannot be imported or returned something other than a string or None."""


def load_hook(spec: str) -> Hook:
    """The function ``package.module:function`` names (``data.redact.hook``)."""
    module_name, _, attr = spec.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RedactionError(f"data.redact.hook={spec!r} cannot be loaded: {exc}") from None
    if not callable(hook):
        raise RedactionError(f"data.redact.hook={spec!r} is not callable")
    return hook


class Redactor:
    """``redactor(text)`` is ``(text or None when the hook drops it, whether anything changed)``."""

    def __init__(self, settings: RedactSettings):
        self.patterns = [re.compile(p) for p in settings.patterns]
        self.replacement = settings.replacement
        self.spec = settings.hook
        self.hook = load_hook(settings.hook) if settings.hook else None

    def __call__(self, text: str) -> tuple[Optional[str], bool]:
        out = text
        for pattern in self.patterns:
            out = pattern.sub(self.replacement, out)
        if self.hook is not None:
            hooked = self.hook(out)
            if hooked is not None and not isinstance(hooked, str):
                raise RedactionError(f"data.redact.hook={self.spec!r} returned {type(hooked).__name__}; "
                                     "it must return the text to keep or None to drop it")
            if hooked is None:
                return None, True
            out = hooked
        return out, out != text
