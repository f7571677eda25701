"""The student of a pipeline run: a structurally pruned copy of the candidate (stored, content-addressed), or a
smaller preset, which distillation from the candidate then trains or heals (the Minitron recipe)."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import Field
from transformers import PreTrainedModel

from llmops.infra.config import DistillConfig, ModelConfig, PruneConfig
from llmops.infra.store import ArtifactStore, content_key, sha256_file
from llmops.models.compression.distill import DistillationError, student_config
from llmops.models.compression.pruning import PruneReport, prune
from llmops.models.model.loading import download_run_model, load_model
from llmops.models.records import PrunedRef, Record, TrainRef
from llmops.models.release.registry import Registry

log = logging.getLogger("llmops.compression")

PRUNED_MANIFEST = "pruned.json"
REPORT_FILE = "prune_report.json"


class TeacherRef(Record):
    """The teacher of a distillation: a run of this pipeline, a registered version, or a local model folder."""

    label: str = Field(description="How the user named it, for logs and cards")
    run: Optional[TrainRef] = None
    model_name: Optional[str] = None
    version: Optional[int] = None
    path: Optional[str] = Field(None, description="A local save_pretrained folder")


def prune_model_dir(store: ArtifactStore, model_dir: Path, texts: Sequence[str], cfg: PruneConfig,
                    cache_dir: Path) -> PrunedRef:
    """Prune the model in ``model_dir`` to ``cfg.keep`` of its trunk, ranked on ``texts[:cfg.calibration_docs]``.

    Stored under ``pruned/<key>/`` (the key hashes the model's weights, the settings and the calibration texts);
    a rerun with the same inputs returns the stored copy.
    """
    calibration = list(texts[:cfg.calibration_docs])
    if not calibration:
        raise ValueError("compress.prune needs calibration documents: the training split is empty")
    source = sha256_file(Path(model_dir) / "model.safetensors")
    key = content_key("prune-v1", source, cfg.model_dump_json(), json.dumps(calibration))[:16]
    prefix = f"pruned/{key}"
    if store.exists(f"{prefix}/{PRUNED_MANIFEST}"):
        return PrunedRef.model_validate(store.get_json(f"{prefix}/{PRUNED_MANIFEST}"))
    model, tokenizer = load_model(model_dir)
    pruned, report = prune(model, calibration, cfg.keep, cfg.axes, tokenizer=tokenizer)
    folder = save_pruned(pruned, tokenizer, report, Path(cache_dir) / prefix)
    hashes = store.upload_dir(folder, prefix)
    ref = PrunedRef(
        uri=store.uri_for(prefix), sha256=hashes["model.safetensors"], source_sha256=source, keep=cfg.keep,
        axes=cfg.axes, parameters_before=report.total_params_before, parameters_after=report.total_params_after,
        shape={"layers": (report.layers_before, len(report.kept_layers)),
               "intermediate_size": (report.intermediate_before, report.intermediate_after),
               "heads": (report.heads_before, report.heads_after)},
    )
    store.put_json(f"{prefix}/{PRUNED_MANIFEST}", ref.model_dump(mode="json"))  # written last: the copy is complete
    log.info("pruned %s to %.0f%% of its trunk (%s): %d -> %d parameters", model_dir,
             100 * report.trunk_fraction, cfg.axes, ref.parameters_before, ref.parameters_after)
    return ref


def student_model(store: ArtifactStore, base: ModelConfig, distill_cfg: DistillConfig, pruned: Optional[PrunedRef],
                  cache_dir: Path) -> ModelConfig:
    """The student's model section: the pruned copy (downloaded, fine-tuned whole) or the configured preset."""
    if pruned is None:
        return student_config(distill_cfg, base)
    local = Path(cache_dir) / store.key_for(pruned.uri)
    if not (local / "model.safetensors").is_file():
        store.download_dir(store.key_for(pruned.uri), local)
    return base.model_copy(update={"pretrained": str(local), "overrides": {}})


def resolve_teacher(store: ArtifactStore, model_name: str, spec: str, cache_dir: Path) -> TeacherRef:
    """``spec``: a local model folder, or a version number or alias of ``model_name`` in the registry (downloaded:
    ``path`` is its local copy, whose tokenizer the student's data is tokenized with)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DistillationError(f"teacher {spec!r} is a folder without config.json: not a saved model")
        return TeacherRef(label=spec, path=str(path.resolve()))
    registry = Registry(store, model_name)
    version = registry.resolve(int(spec) if spec.isdigit() else spec)
    return TeacherRef(label=f"{model_name} v{version} ({spec})", model_name=model_name, version=version,
                      path=str(registry.download(version, cache_dir)))


def teacher_folder(store: ArtifactStore, teacher: TeacherRef, cache_dir: Path) -> tuple[Path, str]:
    """(local folder, URI or path to record) of the teacher."""
    if teacher.run is not None:
        return download_run_model(store, teacher.run, cache_dir), teacher.run.uri
    if teacher.version is not None:
        registry = Registry(store, teacher.model_name)
        return registry.download(teacher.version, cache_dir), registry.ref(teacher.version).uri
    return Path(teacher.path), teacher.path


def save_pruned(model: PreTrainedModel, tokenizer: Any, report: PruneReport, folder: Union[str, Path]) -> Path:
    """Write the model, the tokenizer (if not None) and ``prune_report.json`` into ``folder`` atomically.

    Everything is written into a temporary sibling folder that is then renamed onto ``folder``; an existing
    ``folder`` is replaced only once the new one is complete.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        if folder.exists():
            folder.rename(old)  # moved aside, deleted once the new folder is in place
        tmp.rename(folder)
    except BaseException:
        if old.exists() and not folder.exists():
            old.rename(folder)  # the previous folder comes back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder
