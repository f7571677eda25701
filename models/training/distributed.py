"""Scale-out on torch.distributed: the torchrun command, process-group set-up, DDP/FSDP wrapping, data slices,
full-state checkpoints."""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from llmops.infra.config import DistributedSettings
from llmops.models.training.batching import Batch, block_batch
from llmops.models.training.checkpoint import Checkpointer, TrainerState, TrainingError

WORKER_MODULE = "llmops.models.training.worker"


def torchrun_command(settings: DistributedSettings, run_id: str, args: Sequence[str] = (),
                     module: str = WORKER_MODULE) -> list[str]:
    """``python -m torch.distributed.run ... -m <module> <args>`` for ``train.distributed``.

    One node without an endpoint uses ``--standalone`` (torchrun picks a free local port). With an
    endpoint every node runs this same command; the rendezvous id defaults to the run id, so the
    nodes of one run find each other and a rerun of another run never joins a stale rendezvous.
    """
    s = settings
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={s.nnodes}",
           f"--nproc-per-node={s.nproc_per_node}", f"--max-restarts={s.max_restarts}"]
    if s.rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        cmd += [f"--rdzv-backend={s.rdzv_backend}", f"--rdzv-endpoint={s.rdzv_endpoint}",
                f"--rdzv-id={s.rdzv_id or f'llmops-{run_id}'}", f"--node-rank={s.node_rank}"]
    return cmd + ["-m", module, *args]


def _tie_map(model: torch.nn.Module) -> dict[str, list[str]]:
    """Names safetensors' ``save_model`` keeps -> the tied names it drops (tied embeddings and LM head).

    Computed on the unsharded model: a gathered FSDP state dict holds tied weights as separate
    copies, and dropping the same names makes its checkpoint byte-identical to a single process's.
    """
    from safetensors.torch import _remove_duplicate_names

    return {k: sorted(v) for k, v in _remove_duplicate_names(model.state_dict()).items()}


@dataclass
class Parallel:
    """This process's part in training. The default (world size 1) is plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"
    cpu_offload: bool = False
    ties: dict[str, list[str]] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes (checkpoints, metrics, plots, the run's outputs)."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world_size > 1 and self.strategy == "fsdp"

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DDP, or FSDP2 with one shard group per decoder layer plus the root (embeddings, norm, head).

        Under FSDP only rank 0's weights count: the other ranks may pass the model built on the
        ``meta`` device (nothing allocated), and every rank ends up with its shard of rank 0's
        weights, on ``device``. A model already sharded is returned as it is.
        """
        if self.world_size == 1:
            return model
        if not self.sharded:
            ids = ([device.index if device.index is not None else torch.cuda.current_device()]
                   if device.type == "cuda" else None)
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard

        if isinstance(model, FSDPModule):
            return model
        if self.is_main and _on_meta(model):
            raise TrainingError("distributed.strategy=fsdp: rank 0 needs the model's real weights, "
                                "not a meta-device skeleton")
        # rank 0 alone can see which weights are tied: storage pointers of meta tensors are all 0
        holder = [_tie_map(model) if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        self.ties = holder[0]
        full = model.state_dict() if self.is_main else {}  # rank 0's own tensors, kept from being freed by sharding
        # pinned host memory needs an accelerator; on CPU the shards are in host memory anyway
        kwargs = {"offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda")} if self.cpu_offload else {}
        for layer in _decoder_layers(model):
            fully_shard(layer, **kwargs)  # moves each layer's shard to the device: one whole layer at a time there
        fully_shard(model, **kwargs)
        self._from_rank0(model, full, device)
        return model

    def _from_rank0(self, model: torch.nn.Module, full: dict[str, torch.Tensor], device: torch.device) -> None:
        """Give every rank its shard of rank 0's weights, tensor by tensor (no rank holds more than one whole)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        if _on_meta(model):
            model.to_empty(device=device)
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        for buffer in model.buffers():  # non-persistent buffers (rotary frequencies) are not in the state dict
            dist.broadcast(buffer, src=0)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

    def shard(self, batch: Batch) -> Batch:
        """This rank's rows of a global batch: every rank draws the same batch from the same seeded
        sampler and keeps an equal contiguous slice, so N ranks x b rows equal 1 rank x N·b rows."""
        if self.world_size == 1:
            return batch
        n = batch.input_ids.shape[0] // self.world_size
        rows = slice(self.rank * n, (self.rank + 1) * n)
        ids = batch.input_ids[rows]
        if batch.attention_mask is None:
            return block_batch(ids)
        mask = batch.attention_mask[rows]
        targets = int((mask.sum(1) - 1).clamp(min=0).sum())
        return Batch(ids, batch.labels[rows], mask, int(mask.sum()), targets)

    def sync_gradients(self, model: torch.nn.Module, last: bool) -> AbstractContextManager:
        """Reduce gradients only on the last micro-batch of an accumulation window (one all-reduce per step)."""
        if self.world_size == 1 or last:
            if self.sharded:
                model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.sharded:
            model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return model.no_sync()

    def mean(self, value: float) -> float:
        """The mean over ranks (the logged loss)."""
        return self._reduce(value, dist.ReduceOp.SUM) / self.world_size if self.world_size > 1 else value

    def max(self, value: float) -> float:
        """The max over ranks: step times, so every rank sees the same clock and stops at the same step."""
        return self._reduce(value, dist.ReduceOp.MAX) if self.world_size > 1 else value

    def _reduce(self, value: float, op) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t, op=op)
        return float(t.item())

    def _collective_device(self) -> torch.device:
        return (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
                else torch.device("cpu"))

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def save(self, checkpointer: Checkpointer, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             state: TrainerState, scaler, files) -> None:
        """Rank 0 writes a checkpoint in the single-process format; FSDP gathers it from every rank first."""
        if not self.sharded:
            if self.is_main:
                checkpointer.save(self.unwrap(model), optimizer, state, scaler, files)
        else:
            weights, optim = self._full_state(model, optimizer)
            if self.is_main:
                checkpointer.commit(lambda path: _save_safetensors(weights, self.ties, path), optim, state, scaler,
                                    files)
        self.barrier()  # no rank may read `latest` (or exit) before the checkpoint is committed

    def load(self, checkpointer: Checkpointer, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scaler, device: torch.device, files) -> TrainerState:
        """Every rank reads the checkpoint; under FSDP rank 0 reads the (full) weights and optimizer
        state in CPU memory and sends each rank its shard, tensor by tensor."""
        if not self.sharded:
            return checkpointer.load(step, self.unwrap(model), optimizer, scaler, device, files)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        from_rank0 = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)

        def read_weights(path: str) -> None:
            set_model_state_dict(model, _load_safetensors(path, self.ties) if self.is_main else {}, options=from_rank0)

        def load_optimizer(indexed: dict) -> None:
            state = _by_name(indexed, model, optimizer) if self.is_main else {}
            set_optimizer_state_dict(model, optimizer, state, options=from_rank0)

        # the optimizer state (2x the weights) is mapped from the file in CPU memory, never onto a device whole
        return checkpointer.restore(step, read_weights, load_optimizer, scaler, torch.device("cpu"), files, mmap=True)

    def _full_state(self, model, optimizer) -> tuple[dict, dict]:
        """The gathered model and optimizer state (on rank 0, in CPU memory; empty elsewhere)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        optim = get_optimizer_state_dict(model, optimizer, options=options)
        return weights, (_by_index(optim) if self.is_main else {})


def _on_meta(model: torch.nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (``_no_split_modules`` names their class)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TrainingError(f"distributed.strategy=fsdp: found no decoder layers in {type(model).__name__} to shard; "
                            "use distributed.strategy=ddp")
    return layers


def _save_safetensors(weights: dict[str, torch.Tensor], ties: dict[str, list[str]], path: str) -> None:
    """What ``safetensors.torch.save_model`` writes for the unsharded model: tied copies dropped, named in metadata."""
    from safetensors.torch import save_file

    weights, metadata = dict(weights), {}
    for kept, dropped in ties.items():
        for name in dropped:
            weights.pop(name, None)
            metadata[name] = kept
    save_file({k: v.contiguous() for k, v in weights.items()}, path, metadata=metadata or None)


def _load_safetensors(path: str, ties: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights = load_file(path)
    for kept, dropped in ties.items():
        for name in dropped:
            weights[name] = weights[kept]
    return weights


def _by_index(optim: dict) -> dict:
    """A name-keyed optimizer state (torch.distributed.checkpoint's) as ``Optimizer.state_dict()`` keys it:
    parameters numbered in group order, so a single process can resume a sharded run and back."""
    order = [name for group in optim["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in optim["param_groups"]]
    return {"state": {index[n]: s for n, s in optim["state"].items()}, "param_groups": groups}


def _by_name(indexed: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The inverse of :func:`_by_index` for this optimizer's parameters (FSDP2 keeps parameter names)."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in indexed["param_groups"]]
    return {"state": {order[i]: s for i, s in indexed["state"].items()}, "param_groups": groups}


def init_parallel(settings: DistributedSettings, device_kind: str) -> tuple[Parallel, torch.device]:
    """Join the process group torchrun described in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Each rank takes the GPU of its LOCAL_RANK; on CPU every rank shares the host (gloo).
    """
    if "RANK" not in os.environ:
        raise TrainingError(f"{WORKER_MODULE} runs under torchrun (RANK is not set): launch it with torchrun_command")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = device_kind == "cuda" or (device_kind == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = settings.backend if settings.backend != "auto" else ("nccl" if cuda else "gloo")
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=settings.timeout_minutes))
    parallel = Parallel(dist.get_rank(), dist.get_world_size(), local_rank, settings.strategy,
                        settings.fsdp_cpu_offload)
    return parallel, torch.device("cuda", local_rank) if cuda else torch.device("cpu")


def close_parallel() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
