"""torchrun's entry point for a training run (``-m llmops.models.training.worker``): every rank joins the process
group and runs the job the launcher stored."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

from llmops.infra.store import open_store
from llmops.models.data.packing import load_packed
from llmops.models.data.tokenizer import load_tokenizer
from llmops.models.model.loading import load_model
from llmops.models.training.distillation import TeacherSpec
from llmops.models.training.distributed import close_parallel, init_parallel
from llmops.models.training.launcher import METRICS_PREFIX, PREFLIGHT_PREFIX, DistributedJob
from llmops.models.training.run import run_training


def _record(fn):
    """torchelastic's error recorder: a failing rank's traceback reaches torchrun's summary."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(fn)


@_record
def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=f"torchrun ... -m {__name__}", description=__doc__)
    parser.add_argument("--store", required=True, help="artifact store URI (credentials come from the environment)")
    parser.add_argument("--job", required=True, help="store key of the run's job.json")
    parser.add_argument("--cache-dir", required=True, help="local scratch for data, tokenizer and metrics")
    args = parser.parse_args(argv)
    store, cache = open_store(args.store), Path(args.cache_dir)
    job = DistributedJob.model_validate(store.get_json(args.job))
    parallel, _ = init_parallel(job.train.distributed, job.train.device)  # the training loop resolves the same device
    logging.basicConfig(level=logging.INFO if parallel.is_main else logging.WARNING,
                        format=f"[rank {parallel.rank}] %(name)s: %(message)s")
    try:
        # the ranks of a node share its cache: one downloads, the others wait and read
        if parallel.local_rank == 0:
            load_tokenizer(store, job.tokenizer, cache)
            for split in ("train", "validation"):
                load_packed(store, job.packed, split, cache)
            _teacher_dir(store, job, cache)
        parallel.barrier()
        tokenizer = load_tokenizer(store, job.tokenizer, cache)
        run_training(store, job.packed, job.tokenizer, tokenizer, job.model, job.train, cache,
                     on_metrics=lambda m: print(METRICS_PREFIX + m.to_json(), flush=True),
                     on_preflight=lambda r: print(PREFLIGHT_PREFIX + r.model_dump_json(), flush=True),
                     parallel=parallel, teacher=_teacher(job, _teacher_dir(store, job, cache, fetch=False)))
    finally:
        close_parallel()


def _teacher_dir(store, job: DistributedJob, cache: Path, fetch: bool = True) -> Optional[Path]:
    """The teacher's folder on this node: the launcher's path, else a copy from the store (fetched by local rank 0)."""
    if job.teacher is None:
        return None
    folder = Path(job.teacher.path)
    if (folder / "config.json").is_file():
        return folder
    folder = cache / "teachers" / job.teacher.record.teacher_sha256[:16]
    if fetch and not (folder / "model.safetensors").is_file():
        store.download_dir(store.key_for(job.teacher.record.teacher), folder)
    return folder


def _teacher(job: DistributedJob, folder: Optional[Path]) -> Optional[TeacherSpec]:
    if job.teacher is None:
        return None
    model, _ = load_model(folder)
    r = job.teacher.record
    return TeacherSpec(model, job.teacher.cfg, r.teacher, r.teacher_sha256, r.teacher_version)


if __name__ == "__main__":
    main(sys.argv[1:])
