"""Where the engine serves: serve.device resolved against what torch sees."""
from __future__ import annotations

import pytest
import torch

from llmops.models.serving.engine import serving_device


def test_cpu_is_cpu_and_auto_follows_cuda():
    assert serving_device("cpu") == "cpu"
    assert serving_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_cuda_without_a_device_is_a_clear_error():
    with pytest.raises(RuntimeError, match="serve.device is cuda"):
        serving_device("cuda")
