"""flows/local/shutdown.py: within the block SIGTERM raises KeyboardInterrupt; after it, the old handler is back."""
from __future__ import annotations

import signal

import pytest

from llmops.flows.local.shutdown import sigterm_as_interrupt


def test_sigterm_is_a_keyboard_interrupt_within_and_the_previous_handler_returns_after():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), sigterm_as_interrupt():
        signal.raise_signal(signal.SIGTERM)  # its Python handler runs before the call returns
    assert signal.getsignal(signal.SIGTERM) is before
