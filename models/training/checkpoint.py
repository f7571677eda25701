"""Resumable training checkpoints in the artifact store: weights, optimizer, RNG and data position, atomic,
last K kept."""
from __future__ import annotations

import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, load_model, save_file, save_model

from llmops.infra.store import ArtifactStore

log = logging.getLogger("llmops.checkpoint")


class TrainingError(RuntimeError):
    """Training cannot start or cannot continue (diverged, misconfigured, too little data)."""


class TrainerState(BaseModel):
    """Where a run stands; with the tensors beside it, enough to continue as if never stopped."""

    model_config = ConfigDict(extra="forbid")

    step: int = 0
    epoch: int = 0
    cursor: int = 0  # next position in this epoch's permutation of the training blocks
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # training wall-clock so far, across restarts (drives time-budgeted schedules)
    last_val_loss: Optional[float] = None
    python_rng: Optional[list] = Field(None, repr=False)
    numpy_rng: Optional[dict] = Field(None, repr=False)


def capture_rng(state: TrainerState) -> dict[str, torch.Tensor]:
    """Record Python/NumPy RNG in ``state``; return torch RNG tensors to save beside it."""
    version, internal, gauss = random.getstate()
    state.python_rng = [version, list(internal), gauss]
    state.numpy_rng = _jsonable(np.random.get_state(legacy=False))
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return tensors


def restore_rng(state: TrainerState, tensors: dict[str, torch.Tensor]) -> None:
    if state.python_rng:
        version, internal, gauss = state.python_rng
        random.setstate((version, tuple(internal), gauss))
    if state.numpy_rng:
        np.random.set_state(state.numpy_rng)
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _has_frozen(model: torch.nn.Module) -> bool:
    return any(not p.requires_grad for p in model.parameters())


def save_weights(model: torch.nn.Module, path: str) -> None:
    """Every weight, or with frozen ones (LoRA) only the trainable: the frozen come back from the base model."""
    if _has_frozen(model):
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, path)
    else:
        save_model(model, path)


def load_weights(model: torch.nn.Module, path: str, device: torch.device) -> None:
    """The inverse of :func:`save_weights`; a checkpoint of other trainable weights is refused."""
    if not _has_frozen(model):
        load_model(model, path, device=str(device))
        return
    tensors = load_file(path, device=str(device))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != trainable:
        raise TrainingError(
            f"the checkpoint holds {len(tensors)} trainable tensors but the model has {len(trainable)} "
            f"(e.g. {sorted(set(tensors) ^ trainable)[:3]}): it was written by another train.lora setting"
        )
    model.load_state_dict(tensors, strict=False)


class Checkpointer:
    """Checkpoints under ``<prefix>/step-<n>/``; a checkpoint exists once its manifest.json does.

    ``<prefix>/latest.json`` names the newest complete checkpoint. A crash mid-save leaves an
    incomplete folder without a manifest, which is ignored (and overwritten on the next save).
    """

    def __init__(self, store: ArtifactStore, prefix: str, keep: int = 2):
        self.store, self.prefix, self.keep = store, prefix.rstrip("/"), keep

    def _dir(self, step: int) -> str:
        return f"{self.prefix}/step-{step:08d}"

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainerState,
             scaler: Optional[torch.amp.GradScaler] = None, files: Optional[dict[str, Path]] = None) -> str:
        """Save a checkpoint at ``state.step``; ``files`` (name -> local path) travel with it."""
        return self.commit(lambda path: save_weights(model, path), optimizer.state_dict(), state, scaler, files)

    def commit(self, write_weights: Callable[[str], None], optimizer_state: dict, state: TrainerState,
               scaler: Optional[torch.amp.GradScaler] = None, files: Optional[dict[str, Path]] = None) -> str:
        """:meth:`save` from parts: ``write_weights(path)`` writes model.safetensors (sharded training
        gathers the full weights first, so every checkpoint has the single-process format)."""
        rng = capture_rng(state)
        extra = {"optimizer": optimizer_state}
        if scaler is not None and scaler.is_enabled():
            extra["scaler"] = scaler.state_dict()
        key = self._dir(state.step)
        with tempfile.TemporaryDirectory() as tmp:
            write_weights(f"{tmp}/model.safetensors")
            torch.save(extra, f"{tmp}/optimizer.pt")
            torch.save(rng, f"{tmp}/rng.pt")
            for name, path in (files or {}).items():
                if Path(path).exists():
                    shutil.copyfile(path, f"{tmp}/{name}")
            hashes = self.store.upload_dir(tmp, key)
        self.store.put_json(f"{key}/trainer_state.json", state.model_dump(mode="json"))
        self.store.put_json(f"{key}/manifest.json", {"step": state.step, "files": hashes})
        self.store.put_json(f"{self.prefix}/latest.json", {"step": state.step, "key": key})
        self._prune()
        log.info("checkpoint at step %d -> %s", state.step, self.store.uri_for(key))
        return self.store.uri_for(key)

    def steps(self) -> list[int]:
        """Steps of complete checkpoints, oldest first."""
        found = set()
        for key in self.store.list(self.prefix):
            parent, _, name = key.rpartition("/")
            if name == "manifest.json" and parent.rsplit("/", 1)[-1].startswith("step-"):
                found.add(int(parent.rsplit("-", 1)[-1]))
        return sorted(found)

    def _prune(self) -> None:
        for step in self.steps()[:-self.keep]:
            # manifest first: the checkpoint stops existing before its files go
            self.store.delete(f"{self._dir(step)}/manifest.json")
            for key in self.store.list(self._dir(step)):
                self.store.delete(key)

    def latest(self) -> Optional[int]:
        steps = self.steps()
        return steps[-1] if steps else None

    def load(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scaler: Optional[torch.amp.GradScaler], device: torch.device,
             files: Optional[dict[str, Path]] = None) -> TrainerState:
        """Load checkpoint ``step`` into the given objects, restore RNG and the saved ``files``."""
        return self.restore(step, lambda path: load_weights(model, path, device), optimizer.load_state_dict,
                            scaler, device, files)

    def restore(self, step: int, read_weights: Callable[[str], None], load_optimizer: Callable[[dict], None],
                scaler: Optional[torch.amp.GradScaler], device: torch.device,
                files: Optional[dict[str, Path]] = None, mmap: bool = False) -> TrainerState:
        """:meth:`load` into parts: ``read_weights(path)`` loads model.safetensors, ``load_optimizer`` the optimizer
        state.

        ``mmap``: map the optimizer state from the file rather than read it all into memory (a rank
        that only needs its shard touches little of it); ``load_optimizer`` must copy what it keeps.
        """
        key = self._dir(step)
        with tempfile.TemporaryDirectory() as tmp:
            local = self.store.download_dir(key, Path(tmp))
            for name, dest in (files or {}).items():
                if (local / name).exists():
                    Path(dest).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(local / name, dest)
            read_weights(str(local / "model.safetensors"))
            extra = torch.load(local / "optimizer.pt", map_location=device, weights_only=True, mmap=mmap)
            rng = torch.load(local / "rng.pt", weights_only=True)
            load_optimizer(extra["optimizer"])
        if scaler is not None and "scaler" in extra:
            scaler.load_state_dict(extra["scaler"])
        state = TrainerState.model_validate(self.store.get_json(f"{key}/trainer_state.json"))
        restore_rng(state, rng)
        return state

    def load_model(self, step: int, model: torch.nn.Module) -> None:
        """Only the weights of checkpoint ``step`` (the final model of a sharded run, rebuilt unsharded)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.store.get_file(f"{self._dir(step)}/model.safetensors", Path(tmp) / "model.safetensors")
            load_weights(model, str(path), torch.device("cpu"))
