"""Compressed variants of a model: int8 dynamic quantization of the Linear layers, saved and rebuilt."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

INT8_FILE = "model.int8.pt"


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of ``model`` with every ``nn.Linear`` replaced by a dynamically quantized int8 Linear.

    Weights are int8 (per-tensor affine); activations are quantized on the fly per batch. Llama
    layers are ``nn.Linear``; GPT-2's ``Conv1D`` blocks are not, so only its head is quantized.
    ``torch.ao.quantization`` is deprecated in favour of torchao, which is not a dependency yet;
    it still ships with torch and its state dicts load with ``weights_only=True``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8
        )


def save_int8(qmodel: torch.nn.Module, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / INT8_FILE
    torch.save(qmodel.state_dict(), path)
    (folder / "quantization.json").write_text(json.dumps(
        {"method": "torch.ao.quantization.quantize_dynamic", "dtype": "qint8", "modules": ["torch.nn.Linear"]},
        indent=2,
    ))
    return path


def load_int8(model_dir: Path, int8_dir: Path) -> PreTrainedModel:
    """Rebuild the int8 model: the fp32 architecture from config.json, quantized, then the int8 weights."""
    # from_config, not the meta device: non-persistent buffers (RoPE's inv_freq) must be computed
    skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), attn_implementation="sdpa")
    qmodel = quantize_int8(skeleton)
    state = torch.load(int8_dir / INT8_FILE, map_location="cpu", weights_only=True)
    qmodel.load_state_dict(state)
    return qmodel.eval()


