"""Structured pruning (Minitron-style) of a causal LM to a real, smaller model of the same class.

Importance comes from activations on calibration data (Minitron, Sreenivas et al. 2024; ShortGPT, Men et al. 2024):
depth ranks decoder layers by Block Influence ``1 - mean cos(input, output)`` over tokens; width ranks, per layer,
MLP channels by mean ``|intermediate|`` (the input of ``down_proj``, GPT-2's ``mlp.c_proj``) and attention heads
by the mean L2 norm of their output (the input of ``o_proj``, split into heads; with grouped-query attention a KV
group goes whole, with its query heads). Every layer keeps the same counts, so the config stays uniform.

The hidden size is never pruned: embeddings, final norm and LM head are copied whole (tied ones stay tied). The
pruned model is built fresh from a copied config (attention modules get their new ``layer_idx``) and round-trips
through ``save_pretrained``/``AutoModelForCausalLM.from_pretrained``. GPT-2 derives its head size from
``n_embd // n_head``, so its heads cannot go without the hidden size: GPT-2 is pruned in depth and MLP width only
(with ``scale_attn_by_inverse_layer_idx`` its attention scaling changes when layers move). Heal by distillation.
"""
from __future__ import annotations

import copy
import dataclasses
from collections import namedtuple
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import GPT2LMHeadModel, LlamaForCausalLM, PreTrainedModel

AXES = ("depth", "width", "both")
Calibration = Union[torch.Tensor, Sequence[Union[torch.Tensor, Sequence[int], str]]]


@dataclass(frozen=True)
class _Arch:
    """Where a supported class keeps what pruning touches, and how each sliced weight is indexed."""

    layers: str  # the decoder layers' ModuleList, as a dotted path from the model
    mlp_in: str  # the module whose input is the MLP intermediate, from a layer
    attn_in: str  # the module whose input is the heads' concatenated outputs, from a layer
    inter_field: str  # the config field holding the intermediate size
    heads_prunable: bool
    # parameter name inside a layer -> (index kind: chan | q | kv, dim to slice)
    rules: dict[str, tuple[str, int]]


_LLAMA_RULES = {
    **{f"self_attn.{p}_proj.{t}": ("q" if p == "q" else "kv", 0) for p in "qkv" for t in ("weight", "bias")},
    "self_attn.o_proj.weight": ("q", 1),
    **{f"mlp.{p}_proj.{t}": ("chan", 0) for p in ("gate", "up") for t in ("weight", "bias")},
    "mlp.down_proj.weight": ("chan", 1),
}
# GPT-2's Conv1D weights are (in, out)
_GPT2_RULES = {"mlp.c_fc.weight": ("chan", 1), "mlp.c_fc.bias": ("chan", 0), "mlp.c_proj.weight": ("chan", 0)}
# what to keep: decoder layers, intermediate size, KV groups
_Plan = namedtuple("_Plan", "layers inter kv_heads")
_ARCHS: dict[type, _Arch] = {
    LlamaForCausalLM: _Arch("model.layers", "mlp.down_proj", "self_attn.o_proj", "intermediate_size", True,
                            _LLAMA_RULES),
    GPT2LMHeadModel: _Arch("transformer.h", "mlp.c_proj", "attn.c_proj", "n_inner", False, _GPT2_RULES),
}


@dataclass(frozen=True)
class _Dims:
    layers: int
    inter: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int

    @property
    def rep(self) -> int:
        """Query heads per KV group (1 for multi-head attention)."""
        return self.heads // self.kv_heads


@dataclass(frozen=True)
class PruneReport:
    """What pruning kept, its size before and after, and the importance scores it ranked by.

    ``trunk`` is the decoder layers' parameters; ``total`` adds embeddings, final norm and head (tied counted once).
    ``channel_importance`` and ``head_importance`` are per layer of the original model.
    """

    architecture: str
    keep: float
    axes: str
    calibration_tokens: int
    trunk_params_before: int
    trunk_params_after: int
    total_params_before: int
    total_params_after: int
    layers_before: int
    kept_layers: tuple[int, ...]
    intermediate_before: int
    intermediate_after: int
    heads_before: int
    heads_after: int
    kv_heads_before: int
    kv_heads_after: int
    kept_heads: tuple[tuple[int, ...], ...]
    layer_importance: tuple[float, ...]
    channel_importance: tuple[tuple[float, ...], ...]
    head_importance: tuple[tuple[float, ...], ...]

    @property
    def trunk_fraction(self) -> float:
        return self.trunk_params_after / self.trunk_params_before

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "trunk_fraction": self.trunk_fraction}


def _arch_of(model: Any) -> _Arch:
    if (arch := _ARCHS.get(type(model))) is not None:
        return arch
    supported = ", ".join(c.__name__ for c in _ARCHS)
    raise ValueError(f"model: {type(model).__name__} is not supported; supported: {supported}")


def _dims(model: PreTrainedModel, arch: _Arch) -> _Dims:
    cfg = model.config
    heads = cfg.num_attention_heads
    kv = (getattr(cfg, "num_key_value_heads", None) or heads) if arch.heads_prunable else heads
    inter = getattr(cfg, arch.inter_field, None) or 4 * cfg.hidden_size
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return _Dims(cfg.num_hidden_layers, inter, heads, kv, head_dim, cfg.hidden_size)


def _validate(keep: float, axes: str) -> None:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"keep: the fraction of trunk parameters to keep must be in (0, 1], got {keep!r}")
    if axes not in AXES:
        raise ValueError(f"axes: must be one of {', '.join(AXES)}, got {axes!r}")


def _sequences(calibration: Calibration, tokenizer: Any, context: int, vocab: int) -> list[torch.Tensor]:
    """The calibration as 1-D id tensors, truncated to the context, empty ones dropped."""
    items = list(calibration) if not isinstance(calibration, torch.Tensor) or calibration.dim() > 1 \
        else [calibration]
    seqs = []
    for item in items:
        if isinstance(item, str):
            if tokenizer is None:
                raise ValueError("tokenizer: calibration texts need a tokenizer")
            ids = tokenizer.encode(item)
            item = getattr(ids, "ids", ids)
        ids = torch.as_tensor(item, dtype=torch.long).flatten()[:context]
        if ids.numel():
            seqs.append(ids)
    if not seqs:
        raise ValueError("calibration: no tokens to rank importance on (give token-id tensors or texts)")
    low, top = min(int(s.min()) for s in seqs), max(int(s.max()) for s in seqs)
    if low < 0 or top >= vocab:
        raise ValueError(f"calibration: token ids must be in [0, {vocab}), found ids from {low} to {top}")
    return seqs


def _batches(seqs: list[torch.Tensor], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded batches of similar lengths and their token masks (causal: pads never reach real tokens)."""
    ordered = sorted(seqs, key=len, reverse=True)
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start:start + batch_size]
        masks = [torch.ones_like(s, dtype=torch.bool) for s in chunk]
        yield pad_sequence(chunk, batch_first=True), pad_sequence(masks, batch_first=True)


class _Collector:
    """Forward hooks accumulating block influence, channel and head activations over masked tokens."""

    def __init__(self, dims: _Dims):
        self.dims = dims
        self.mask: Optional[torch.Tensor] = None
        self.tokens = 0
        self.inputs: dict[int, torch.Tensor] = {}
        self.influence = torch.zeros(dims.layers, dtype=torch.float64)
        self.channels = torch.zeros(dims.layers, dims.inter, dtype=torch.float64)
        self.heads = torch.zeros(dims.layers, dims.heads, dtype=torch.float64)

    def attach(self, layers: nn.ModuleList, arch: _Arch) -> list[Any]:
        handles = []
        for i, layer in enumerate(layers):
            handles += [
                layer.register_forward_pre_hook(lambda _m, args, i=i: self.inputs.__setitem__(i, args[0])),
                layer.register_forward_hook(lambda _m, _a, out, i=i: self._influence(i, out)),
                layer.get_submodule(arch.mlp_in).register_forward_pre_hook(
                    lambda _m, args, i=i: self._channels(i, args[0])),
                layer.get_submodule(arch.attn_in).register_forward_pre_hook(
                    lambda _m, args, i=i: self._heads(i, args[0])),
            ]
        return handles

    # float32 on the model's device per batch, float64 on the CPU across batches
    def _influence(self, i: int, out: Any) -> None:
        out = out[0] if isinstance(out, tuple) else out
        cos = torch.cosine_similarity(self.inputs.pop(i).float(), out.float(), dim=-1)
        self.influence[i] += (1 - cos)[self.mask].sum().item()

    def _channels(self, i: int, x: torch.Tensor) -> None:
        self.channels[i] += x[self.mask].float().abs().sum(0).to(self.channels)

    def _heads(self, i: int, x: torch.Tensor) -> None:
        per_head = x[self.mask].float().view(-1, self.dims.heads, self.dims.head_dim)
        self.heads[i] += per_head.norm(dim=-1).sum(0).to(self.heads)


@torch.no_grad()
def _importance(model: PreTrainedModel, arch: _Arch, dims: _Dims, seqs: list[torch.Tensor],
                batch_size: int) -> _Collector:
    """Block influence, channel and head importance per layer, averaged over the calibration tokens."""
    collector = _Collector(dims)
    device = next(model.parameters()).device
    handles = collector.attach(model.get_submodule(arch.layers), arch)
    was_training = model.training
    model.eval()
    try:
        for ids, mask in _batches(seqs, batch_size):
            collector.mask = mask.to(device)
            model(input_ids=ids.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    collector.tokens = sum(len(s) for s in seqs)
    for scores in (collector.influence, collector.channels, collector.heads):
        scores /= collector.tokens
    return collector


def _costs(layer: nn.Module, arch: _Arch, dims: _Dims) -> dict[str, float]:
    """Parameters per channel, per query head and per KV head of one layer, and what stays fixed."""
    costs = {"chan": 0.0, "q": 0.0, "kv": 0.0}
    params = dict(layer.named_parameters())
    for name, (kind, dim) in arch.rules.items():
        if name in params:
            unit = 1 if kind == "chan" else dims.head_dim
            costs[kind] += params[name].numel() / params[name].shape[dim] * unit
    costs["total"] = total = sum(p.numel() for p in layer.parameters())
    costs["fixed"] = total - dims.inter * costs["chan"] - dims.heads * costs["q"] - dims.kv_heads * costs["kv"]
    return costs


def _plan(costs: dict[str, float], arch: _Arch, dims: _Dims, keep: float, axes: str) -> _Plan:
    """Layers, intermediate size and KV groups to keep (the split rule is in :func:`prune`)."""
    if axes == "depth":
        return _Plan(max(1, round(keep * dims.layers)), dims.inter, dims.kv_heads)
    layers = dims.layers if axes == "width" else max(1, round(keep ** 0.5 * dims.layers))
    width = min(1.0, keep * dims.layers / layers)
    groups = _groups(width * dims.kv_heads, dims) if arch.heads_prunable else dims.kv_heads
    attention = groups * (dims.rep * costs["q"] + costs["kv"])
    inter = round((width * costs["total"] - costs["fixed"] - attention) / costs["chan"])
    return _Plan(layers, min(dims.inter, max(1, inter)), groups)


def _groups(wanted: float, dims: _Dims) -> int:
    """The KV-group count nearest ``wanted`` (ties: more) whose head count divides the hidden size: transformers'
    Llama config refuses to save (``validate_architecture``) when it does not."""
    allowed = [g for g in range(1, dims.kv_heads + 1) if dims.hidden % (g * dims.rep) == 0]
    return min(allowed, key=lambda g: (abs(g - wanted), -g))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in ascending order."""
    return torch.topk(scores, k).indices.sort().values


def _expand(heads: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` consecutive indices of each of ``heads`` (rows of a head, query heads of a group)."""
    return (heads[:, None] * size + torch.arange(size)).flatten()


def _pruned_config(model: PreTrainedModel, arch: _Arch, dims: _Dims, plan: _Plan, kept: torch.Tensor) -> Any:
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = plan.layers
    setattr(cfg, arch.inter_field, plan.inter)
    if arch.heads_prunable:
        cfg.num_attention_heads = plan.kv_heads * dims.rep
        cfg.num_key_value_heads = plan.kv_heads
        cfg.head_dim = dims.head_dim
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [cfg.layer_types[i] for i in kept.tolist()]
    return cfg


def _weights(model: PreTrainedModel, new: PreTrainedModel, arch: _Arch, kept: torch.Tensor,
             index: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The new model's state dict, sliced from the old one."""
    old = model.state_dict()
    prefix = arch.layers + "."
    weights = {}
    for key, target in new.state_dict().items():
        value = old[key]
        if key.startswith(prefix):
            j, name = key[len(prefix):].split(".", 1)
            value = old[f"{prefix}{int(kept[int(j)])}.{name}"]
            if (rule := arch.rules.get(name)) is not None:
                value = value.index_select(rule[1], index[int(j)][rule[0]].to(value.device))
        if value.shape != target.shape:
            raise RuntimeError(f"pruning produced {key} of shape {tuple(value.shape)}, expected {tuple(target.shape)}")
        weights[key] = value
    return weights


def _selection(imp: _Collector, dims: _Dims, plan: _Plan) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Kept layers, and for each kept layer the kept channels, query heads and KV heads."""
    kept = _top(imp.influence, plan.layers)
    index = []
    for i in kept.tolist():
        groups = _top(imp.heads[i].view(dims.kv_heads, dims.rep).sum(-1), plan.kv_heads)
        q_heads = _expand(groups, dims.rep)
        index.append({"chan": _top(imp.channels[i], plan.inter), "q": _expand(q_heads, dims.head_dim),
                      "kv": _expand(groups, dims.head_dim), "heads": q_heads})
    return kept, index


def _build(model: PreTrainedModel, arch: _Arch, dims: _Dims, plan: _Plan, imp: _Collector
           ) -> tuple[PreTrainedModel, torch.Tensor, list[dict[str, torch.Tensor]]]:
    kept, index = _selection(imp, dims, plan)
    first = next(model.parameters())
    new = type(model)(_pruned_config(model, arch, dims, plan, kept)).to(device=first.device, dtype=first.dtype)
    new.load_state_dict(_weights(model, new, arch, kept, index))
    if getattr(new.config, "tie_word_embeddings", False):
        new.tie_weights()
    return new.eval(), kept, index


def _count(params: Any) -> int:
    return sum(p.numel() for p in params)


def prune(model: PreTrainedModel, calibration: Calibration, keep: float, axes: Literal["depth", "width", "both"],
          *, tokenizer: Any = None, batch_size: int = 8) -> tuple[PreTrainedModel, PruneReport]:
    """Prune ``model`` to about ``keep`` of its trunk (decoder-layer) parameters; the original is untouched.

    Args:
        model: A ``LlamaForCausalLM`` or a ``GPT2LMHeadModel``.
        calibration: Token-id sequences (1-D tensors or lists, or a 2-D tensor of rows), or texts with
            ``tokenizer``; each is truncated to the model's context and run in batches of ``batch_size``.
        keep: The fraction of trunk parameters to keep, in (0, 1]; 1.0 returns an identical copy.
        axes: ``depth`` drops layers, ``width`` shrinks MLP channels and heads, ``both`` does both.

    The split rule: ``depth`` keeps ``round(keep * L)`` layers (at least one). ``width`` keeps every layer and
    shrinks each to ``keep`` of its parameters: KV groups to the count nearest ``keep * groups`` whose heads divide
    the hidden size (at least one; GPT-2: all heads), then the intermediate size is solved so the layer's count
    lands on ``keep`` of the original (the coarse head step is absorbed by the MLP). ``both`` keeps
    ``round(sqrt(keep) * L)`` layers and then shrinks the width to ``keep * L / kept_layers`` per layer, so the
    trunk lands close to ``keep``.

    Returns:
        The pruned model (a new instance of the same class, eval mode) and its :class:`PruneReport`.
    """
    arch = _arch_of(model)
    _validate(keep, axes)
    dims = _dims(model, arch)
    seqs = _sequences(calibration, tokenizer, model.config.max_position_embeddings, model.config.vocab_size)
    imp = _importance(model, arch, dims, seqs, batch_size)
    plan = _plan(_costs(model.get_submodule(arch.layers)[0], arch, dims), arch, dims, keep, axes)
    new, kept, index = _build(model, arch, dims, plan, imp)
    report = PruneReport(
        architecture=type(model).__name__, keep=float(keep), axes=axes, calibration_tokens=imp.tokens,
        trunk_params_before=_count(model.get_submodule(arch.layers).parameters()),
        trunk_params_after=_count(new.get_submodule(arch.layers).parameters()),
        total_params_before=_count(model.parameters()), total_params_after=_count(new.parameters()),
        layers_before=dims.layers, kept_layers=tuple(kept.tolist()),
        intermediate_before=dims.inter, intermediate_after=plan.inter,
        heads_before=dims.heads, heads_after=plan.kv_heads * dims.rep,
        kv_heads_before=dims.kv_heads, kv_heads_after=plan.kv_heads,
        kept_heads=tuple(tuple(ix["heads"].tolist()) for ix in index),
        layer_importance=tuple(imp.influence.tolist()),
        channel_importance=tuple(tuple(row) for row in imp.channels.tolist()),
        head_importance=tuple(tuple(row) for row in imp.heads.tolist()),
    )
    return new, report
