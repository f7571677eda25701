"""Compressed variants of a model (int8, bf16): made from the fp32 model, saved without pickle, rebuilt.

A variant lives in its own folder beside the fp32 model with a ``variant.json`` recipe:

- ``int8``: dynamic int8 on every ``nn.Linear`` and GPT-2 ``Conv1D`` (turned into the equivalent Linear first):
  weights int8 per output channel, activations quantized per batch at run time. ``model.int8.safetensors``
  holds each quantized layer's int8 weight, scales, zero points and bias, and every other tensor in fp32;
  loading rebuilds the architecture from the fp32 ``config.json`` and puts the int8 weights back.
  We use ``torch.ao``'s dynamic quantization because it is the fastest int8 path measured here
  (bench/bench_compression.py: 2.3x fp32 at batch 1, where torchao 0.18's int8 weight-only gave 0.59x and its
  dynamic activation+weight 0.52x in eager mode); ``torch.ao`` is deprecated but ships with torch.
- ``bf16``: the model cast to bfloat16, saved by ``save_pretrained`` and loaded by ``from_pretrained``. It is
  faster only where the hardware computes in bf16 (GPUs, CPUs with AVX512-BF16 or AMX); the compress
  stage measures that and serves it only where it is.
"""
from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.pytorch_utils import Conv1D

VARIANTS = ("fp32", "bf16", "int8")
RECIPE = "variant.json"
INT8_FILE = "model.int8.safetensors"
DynamicLinear = torch.ao.nn.quantized.dynamic.Linear


class VariantError(ValueError):
    """An unknown variant, or a variant folder that cannot be loaded."""


def make_variant(model: PreTrainedModel, variant: str) -> PreTrainedModel:
    """A copy of the (fp32) ``model`` as ``variant``; the original is untouched."""
    if variant == "int8":
        return quantize_int8(model)
    if variant == "bf16":
        return _bf16(model)
    raise VariantError(f"unknown model variant {variant!r}; known: {', '.join(v for v in VARIANTS if v != 'fp32')}")


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of ``model`` with every Linear (and Conv1D, as a Linear) dynamically quantized to int8 per channel."""
    qmodel = _conv1d_as_linear(copy.deepcopy(model).cpu().float().eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        return torch.ao.quantization.quantize_dynamic(
            qmodel, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)


def _bf16(model: PreTrainedModel) -> PreTrainedModel:
    """The model in bfloat16 as ``from_pretrained(dtype=bfloat16)`` builds it: RoPE's frequencies stay fp32."""
    fp32 = {name: buf for name, buf in model.named_buffers() if buf.is_floating_point()}
    vmodel = copy.deepcopy(model).cpu().to(torch.bfloat16).eval()
    for name, buf in fp32.items():
        parent, _, attr = name.rpartition(".")
        owner = vmodel.get_submodule(parent) if parent else vmodel
        if attr in owner._non_persistent_buffers_set:
            owner._buffers[attr] = buf.detach().clone().cpu()
    return vmodel


def _conv1d_as_linear(model: torch.nn.Module) -> torch.nn.Module:
    """GPT-2's Conv1D (``x @ W + b`` with W of shape (in, out)) replaced by the equal ``nn.Linear``, in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            n_in, n_out = module.weight.shape
            linear = torch.nn.Linear(n_in, n_out, device=module.weight.device, dtype=module.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                linear.bias.copy_(module.bias)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, linear)
    return model


def save_variant(vmodel: PreTrainedModel, variant: str, folder: Path) -> Path:
    """Write the variant's weights and recipe into ``folder``; returns the weights file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if variant == "bf16":
        vmodel.save_pretrained(folder)
        weights = folder / "model.safetensors"
        recipe = {"variant": "bf16", "format": "transformers", "dtype": "bfloat16"}
    elif variant == "int8":
        weights = folder / INT8_FILE
        save_file(_int8_tensors(vmodel), str(weights), metadata={"variant": "int8"})
        recipe = {"variant": "int8", "format": "llmops-int8-dynamic", "weights": INT8_FILE,
                  "method": "torch.ao.quantization.quantize_dynamic", "qconfig": "per_channel_dynamic_qconfig",
                  "dtype": "qint8", "modules": ["torch.nn.Linear", "transformers.pytorch_utils.Conv1D"]}
    else:
        raise VariantError(f"unknown model variant {variant!r}")
    (folder / RECIPE).write_text(json.dumps(recipe, indent=2) + "\n")
    return weights


def _int8_tensors(qmodel: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors, quantized = {}, []
    for name, module in qmodel.named_modules():
        if isinstance(module, DynamicLinear):
            weight, bias = module._weight_bias()
            tensors[f"{name}.int8_weight"] = weight.int_repr().contiguous()
            # the observer computed the scales in fp32: stored so, they rebuild the same weights
            tensors[f"{name}.scales"] = weight.q_per_channel_scales().float().contiguous()
            tensors[f"{name}.zero_points"] = weight.q_per_channel_zero_points().int().contiguous()
            if bias is not None:
                tensors[f"{name}.bias"] = bias.detach().clone().contiguous()
            quantized.append(name + ".")
    for key, value in qmodel.state_dict().items():
        if isinstance(value, torch.Tensor) and not value.is_quantized and not key.startswith(tuple(quantized)):
            tensors[key] = value.detach().clone().contiguous()  # a clone: safetensors refuses shared storage
    return tensors


def load_variant(model_dir: Path, variant_dir: Path, attention: str = "sdpa") -> PreTrainedModel:
    """Rebuild a saved variant; the fp32 ``model_dir`` gives the architecture of an int8 one."""
    recipe_path = Path(variant_dir) / RECIPE
    if not recipe_path.is_file():
        raise VariantError(f"{variant_dir} has no {RECIPE}: not a saved model variant")
    recipe = json.loads(recipe_path.read_text())
    if recipe.get("format") == "transformers":
        dtype = getattr(torch, recipe.get("dtype", "float32"))
        return AutoModelForCausalLM.from_pretrained(variant_dir, dtype=dtype, attn_implementation=attention).eval()
    if recipe.get("format") == "llmops-int8-dynamic":
        return _load_int8(Path(model_dir), Path(variant_dir) / recipe["weights"], attention)
    raise VariantError(f"{recipe_path}: unknown variant format {recipe.get('format')!r}")


def _load_int8(model_dir: Path, weights: Path, attention: str) -> PreTrainedModel:
    # from_config, not the meta device: non-persistent buffers (RoPE's inv_freq) must be computed
    skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), attn_implementation=attention)
    qmodel = quantize_int8(skeleton)
    tensors = load_file(str(weights))
    quantized = {name: m for name, m in qmodel.named_modules() if isinstance(m, DynamicLinear)}
    for name, module in quantized.items():
        try:
            q = torch._make_per_channel_quantized_tensor(
                tensors.pop(f"{name}.int8_weight"), tensors.pop(f"{name}.scales").double(),
                tensors.pop(f"{name}.zero_points").long(), 0)
        except KeyError as exc:
            raise VariantError(f"{weights}: no int8 weights for layer {name} ({exc})") from None
        module.set_weight_bias(q, tensors.pop(f"{name}.bias", None))
    state = qmodel.state_dict()  # keeps the per-module version metadata the quantized layers' loaders read
    prefixes = tuple(name + "." for name in quantized)
    expected = {k for k, v in state.items()
                if not (isinstance(v, torch.Tensor) and v.is_quantized) and not k.startswith(prefixes)}
    missing, unexpected = sorted(expected - tensors.keys()), sorted(tensors.keys() - expected)
    if missing or unexpected:
        raise VariantError(f"{weights} does not match {model_dir}/config.json: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    state.update(tensors)
    qmodel.load_state_dict(state)
    return qmodel.eval()


def serving_variant(requested: str, available: Sequence[str], fastest: Optional[str], device_type: str = "cpu") -> str:
    """The variant a server serves (and a reference profile is built with): ``requested`` unless it is ``auto``.

    ``auto`` takes the fastest variant that passed its gate on the CPU it was measured on (``fastest``), fp32
    when none did; on a GPU, bf16 where the version has it (int8 dynamic quantization runs on CPUs only).
    """
    if requested != "auto":
        return requested
    if device_type == "cuda":
        return "bf16" if "bf16" in available else "fp32"
    return fastest if fastest in available else "fp32"
