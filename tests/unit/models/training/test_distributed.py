"""Scale-out: torchrun with 2 CPU processes (gloo) computes what one process does, DDP and FSDP; rank 0 alone writes."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from llmops.infra.config import ConfigError, DistributedSettings, ModelConfig, PipelineConfig, TrainConfig
from llmops.infra.store import LocalStore
from llmops.models.model.presets import build_config
from llmops.models.records import DatasetRef, KernelChoice, TokenizerRef
from llmops.models.training import preflight as pf
from llmops.models.training.batching import pad_batch
from llmops.models.training.calibration import choose_kernels
from llmops.models.training.checkpoint import Checkpointer, TrainingError
from llmops.models.training.distributed import Parallel, torchrun_command
from llmops.models.training.loop import read_metrics, train
from tests.helpers import stdlib_texts, tiny_tokenizer
from tests.unit.models.training.test_loop import BLOCK, VOCAB, config, patterned_blocks, tiny_model
from tests.unit.models.training.test_training_features import patterned_documents

# the repository root: torchrun's workers import this module as tests.unit.models.training.test_distributed
ROOT = Path(__file__).parents[4]
STEPS = 12
# (name, strategy, overrides): each trains the same run as one process does with the whole batch
VARIANTS = [("ddp", "ddp", {}), ("fsdp", "fsdp", {}), ("fsdp-offload", "fsdp", {}),
            ("ddp-pad", "ddp", {"batching": "pad"})]


def run_config(**overrides) -> TrainConfig:
    return config(max_steps=STEPS, batch_size=8, grad_accum_steps=2, eval_every=6, checkpoint_every=4,
                  keep_checkpoints=2, fused_adamw=False, **overrides)


def variant_data(overrides: dict):
    if overrides.get("batching") == "pad":
        return patterned_documents(), patterned_documents(16, seed=1)
    blocks = patterned_blocks()
    return blocks, blocks[:16]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(**fields) -> DistributedSettings:
    return DistributedSettings(nproc_per_node=2, rdzv_endpoint=f"127.0.0.1:{free_port()}", **fields)


def torchrun(args: list[str], timeout: float = 240) -> None:
    cmd = torchrun_command(two_ranks(), "test", args, module="tests.unit.models.training.test_distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def weights(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    return load_file(str(path)), metadata


# ---------------------------------------------------------------- what each rank runs (under torchrun)


def rank_model(parallel: Parallel, seed: int = 0) -> torch.nn.Module:
    """Under FSDP rank 0 alone builds the weights; rank 1 passes a meta-device skeleton and receives its shard."""
    if parallel.sharded and not parallel.is_main:
        return pf.skeleton(build_config("tiny", vocab_size=VOCAB, context_length=BLOCK, bos_token_id=0, eos_token_id=0))
    return tiny_model(seed)


def _rank_main(out: Path) -> None:
    """Every variant on this rank, then a resume of the FSDP run from its step-8 checkpoint."""
    from llmops.models.training.distributed import close_parallel, init_parallel

    torch.set_num_threads(1)
    first, _ = init_parallel(DistributedSettings(nproc_per_node=2), "cpu")
    for name, strategy, overrides in VARIANTS:
        parallel = Parallel(first.rank, first.world_size, 0, strategy, cpu_offload=name.endswith("offload"))
        data, val = variant_data(overrides)
        store = LocalStore(out / name)  # the same paths on both ranks: a write by rank 1 would show
        train(rank_model(parallel), data, val, run_config(**overrides), Checkpointer(store, "ck"),
              out / name / "m.jsonl", parallel=parallel)
    parallel = Parallel(first.rank, first.world_size, 0, "ddp")
    kernels = choose_kernels(tiny_model(), patterned_blocks(), run_config(calibration_share=1.0), torch.device("cpu"),
                             store=LocalStore(out / "calibration"), run_prefix="runs/r",
                             cache_dir=out / f"cache-{parallel.rank}", step_s=0.001, parallel=parallel)
    (out / f"kernels-{parallel.rank}.json").write_text(kernels.model_dump_json())
    parallel = Parallel(first.rank, first.world_size, 0, "fsdp")
    resumed = out / "fsdp-resumed"
    if parallel.is_main:  # as if killed between the step-8 and step-12 checkpoints
        shutil.copytree(out / "fsdp", resumed)
        (resumed / "ck" / "step-00000012" / "manifest.json").unlink()
    parallel.barrier()
    outcome = train(rank_model(parallel, seed=99), *variant_data({}), run_config(),
                    Checkpointer(LocalStore(resumed), "ck"), resumed / "m.jsonl", parallel=parallel)
    assert outcome.resumed_from_step == 8
    close_parallel()


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    torchrun([str(out)])
    return out


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for name, _, overrides in VARIANTS:
        if name.startswith("fsdp"):
            continue  # the same single-process run as ddp's
        data, val = variant_data(overrides)
        train(tiny_model(), data, val, run_config(**overrides), Checkpointer(LocalStore(out / name), "ck"),
              out / name / "m.jsonl")
    torch.set_num_threads(threads)
    return out


def test_every_rank_trains_with_the_kernels_rank_0_measured(distributed_runs):
    chosen = {rank: KernelChoice.model_validate_json((distributed_runs / f"kernels-{rank}.json").read_text())
              for rank in (0, 1)}
    assert chosen[0].source == "calibrated" and chosen[1] == chosen[0].model_copy(update={"source": "run"})
    assert not (distributed_runs / "cache-1").exists(), "rank 1 read rank 0's decision and measured nothing"


@pytest.mark.parametrize("name", [v[0] for v in VARIANTS])
def test_two_ranks_train_what_one_process_trains(distributed_runs, single_runs, name):
    """2 ranks x 4 rows == 1 process x 8 rows: losses per step, validation losses and final weights."""
    single = single_runs / ("ddp" if name.startswith("fsdp") else name)
    got, want = read_metrics(distributed_runs / name / "m.jsonl"), read_metrics(single / "m.jsonl")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1)), "rank 0 alone writes metrics: one line per step"
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-4)
    val = lambda rows: {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}  # noqa: E731
    assert val(got) == pytest.approx(val(want), rel=1e-4) and sorted(val(got)) == [6, 12]
    assert [r["tokens_seen"] for r in got] == [r["tokens_seen"] for r in want], "tokens are counted globally"
    dist_ck = Checkpointer(LocalStore(distributed_runs / name), "ck")
    assert dist_ck.steps() == [8, 12]
    got_w, got_meta = weights(distributed_runs / name / "ck" / "step-00000012" / "model.safetensors")
    want_w, want_meta = weights(single / "ck" / "step-00000012" / "model.safetensors")
    assert got_meta == want_meta and set(got_w) == set(want_w), (
        "the single-process checkpoint format (tied weights too)")
    for key in want_w:
        torch.testing.assert_close(got_w[key], want_w[key], rtol=1e-3, atol=1e-5)
    optim = torch.load(distributed_runs / name / "ck" / "step-00000012" / "optimizer.pt",
                       weights_only=True)["optimizer"]
    want_optim = torch.load(single / "ck" / "step-00000012" / "optimizer.pt", weights_only=True)["optimizer"]
    assert sorted(optim["state"]) == sorted(want_optim["state"]), "optimizer state keyed as Optimizer.state_dict()"
    torch.testing.assert_close(optim["state"][3]["exp_avg"], want_optim["state"][3]["exp_avg"], rtol=1e-3, atol=1e-6)


def test_a_sharded_run_resumes_from_its_checkpoint_exactly(distributed_runs):
    straight, resumed = (read_metrics(distributed_runs / "fsdp" / "m.jsonl"),
                         read_metrics(distributed_runs / "fsdp-resumed" / "m.jsonl"))
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1)), "the metrics file is rewound with the checkpoint"
    assert [r["loss"] for r in resumed[8:]] == pytest.approx([r["loss"] for r in straight[8:]], rel=1e-5)
    a = load_file(str(distributed_runs / "fsdp" / "ck" / "step-00000012" / "model.safetensors"))
    b = load_file(str(distributed_runs / "fsdp-resumed" / "ck" / "step-00000012" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def _stored_inputs(store: LocalStore):
    from llmops.models.data.packing import pack_dataset

    tok = tiny_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        hashes = store.upload_dir(tmp, "tokenizers/tiny")
    tok_ref = TokenizerRef(uri=store.uri_for("tokenizers/tiny"), sha256=hashes["tokenizer.json"], kind="bpe",
                           vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    dataset = DatasetRef(name="d", uri="/d/manifest.json", sha256="d" * 64, splits={}, sources=["docs"])
    texts = stdlib_texts()[:60]
    packed = pack_dataset(store, dataset, tok_ref, {"train": texts, "validation": texts[:8]}, tok, BLOCK)
    return tok, tok_ref, packed


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_launcher_runs_torchrun_and_returns_the_record_of_one_process(tmp_path, strategy):
    """The Prefect task's path: job in the store, torchrun, rank 0 commits the run; streamed progress.

    Under FSDP rank 1 never builds the weights (a meta-device skeleton) and the preflight's
    warm-up runs on the sharded model.
    """
    from llmops.models.training.launcher import launch_run
    from llmops.models.training.run import run_training

    cfg = TrainConfig(max_steps=4, max_minutes=None, batch_size=8, block_size=BLOCK, eval_every=4, eval_batches=1,
                      checkpoint_every=2, num_threads=1, warmup_steps=1, preflight_steps=1,
                      distributed=two_ranks(strategy=strategy))
    store = LocalStore(tmp_path / "dist")
    tok, tok_ref, packed = _stored_inputs(store)
    lines, steps, reports = [], [], []
    ref = launch_run(store, packed, tok_ref, ModelConfig(preset="tiny"), cfg, tmp_path / "cache", on_line=lines.append,
                     on_metrics=steps.append, on_preflight=reports.append)
    assert [m.step for m in steps] == [1, 2, 3, 4] and len(reports) == 1 and lines[0].startswith("launching: ")
    assert reports[0].measured_step_s > 0 and reports[0].estimated_duration_s > 0

    single_store = LocalStore(tmp_path / "single")
    _, single_tok_ref, single_packed = _stored_inputs(single_store)
    threads = torch.get_num_threads()
    single = run_training(single_store, single_packed, single_tok_ref, tok, ModelConfig(preset="tiny"),
                          cfg.model_copy(update={"distributed": DistributedSettings()}), tmp_path / "cache1")
    torch.set_num_threads(threads)
    assert ref.run_id == single.run_id, "train.distributed does not change what a run computes, nor its id"
    assert (ref.steps, ref.tokens_seen) == (single.steps, single.tokens_seen)
    assert ref.final_train_loss == pytest.approx(single.final_train_loss, rel=1e-4)
    assert len(read_metrics(store.local_path(store.key_for(ref.metrics_uri)))) == 4
    got = load_file(str(store.local_path(store.key_for(ref.uri)) / "model.safetensors"))
    want = load_file(str(single_store.local_path(single_store.key_for(single.uri)) / "model.safetensors"))
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-3, atol=1e-5)
    assert launch_run(store, packed, tok_ref, ModelConfig(preset="tiny"), cfg, tmp_path / "cache") == ref  # reused


def test_a_failing_worker_raises_with_the_tail_of_its_output(tmp_path, monkeypatch):
    import llmops.models.training.launcher as launcher

    script = "import sys; print('rank 0 starting'); print('ValueError: something broke', file=sys.stderr); sys.exit(3)"
    monkeypatch.setattr(launcher, "torchrun_command", lambda *a, **k: [sys.executable, "-c", script])
    store = LocalStore(tmp_path)
    _, tok_ref, packed = _stored_inputs(store)
    cfg = TrainConfig(block_size=BLOCK, distributed=DistributedSettings(nproc_per_node=2))
    with pytest.raises(TrainingError,
                       match=r"(?s)torchrun exited with 3.*rank 0 starting.*ValueError: something broke"):
        launcher.launch_run(store, packed, tok_ref, ModelConfig(preset="tiny"), cfg, tmp_path / "cache",
                            on_line=lambda _: None)


def test_the_torchrun_command_follows_the_settings():
    one_node = torchrun_command(DistributedSettings(nproc_per_node=4), "abc", ["--job", "j"])
    assert one_node[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in one_node
    assert "--nproc-per-node=4" in one_node and one_node[-4:] == ["-m", "llmops.models.training.worker", "--job", "j"]
    nodes = torchrun_command(DistributedSettings(nproc_per_node=8, nnodes=2, node_rank=1,
                                                 rdzv_endpoint="10.0.0.1:29500"), "abc")
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29500", "--rdzv-id=llmops-abc",
            "--node-rank=1"} <= set(nodes) and "--standalone" not in nodes
    named = torchrun_command(DistributedSettings(nnodes=2, rdzv_endpoint="h:1", rdzv_id="job-7"), "abc")
    assert "--rdzv-id=job-7" in named


@pytest.mark.parametrize("overrides, message", [
    (["train.distributed.nnodes=2"], r"train.distributed: .*nnodes=2 needs rdzv_endpoint"),
    (["train.distributed.nnodes=2", "train.distributed.rdzv_endpoint=h:1", "train.distributed.node_rank=2"],
     r"node_rank \(2\) must be below nnodes \(2\)"),
    (["train.distributed.nproc_per_node=3", "train.batch_size=16"],
     r"batch_size \(16\) is the global batch and must divide"),
    (["train.distributed.strategy=fsdp", "train.lora={}"], "distributed.strategy=fsdp with lora"),
    (["train.distributed.backend=nccl", "train.device=cpu"], "distributed.backend=nccl needs CUDA"),
    (["train.distributed.rdzv_endpoint=nohostport"], r"train.distributed.rdzv_endpoint: String should match pattern"),
    (["train.distributed.strategy=zero3"], r"train.distributed.strategy: Input should be 'ddp' or 'fsdp'"),
])
def test_bad_distributed_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        PipelineConfig().with_overrides(overrides)


def test_ranks_take_equal_slices_of_the_same_global_batch():
    docs = patterned_documents(8)
    batch = pad_batch([docs[i] for i in range(8)])
    parts = [Parallel(rank, 2).shard(batch) for rank in range(2)]
    assert torch.equal(torch.cat([p.input_ids for p in parts]), batch.input_ids)
    assert sum(p.tokens for p in parts) == batch.tokens and sum(p.targets for p in parts) == batch.targets


def test_preflight_counts_one_rank_and_fsdp_shards(tmp_path):
    skeleton = pf.skeleton(build_config("mini", vocab_size=4096, context_length=128, bos_token_id=0, eos_token_id=0))
    data = np.zeros((64, 128), dtype=np.uint16)
    base = dict(batch_size=16, block_size=128, device="cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(base["device"])
    one = pf.preflight(skeleton, TrainConfig(**base), device, "fp32", data)
    ddp = pf.preflight(skeleton, TrainConfig(**base, distributed=DistributedSettings(nproc_per_node=4)),
                       device, "fp32", data)
    fsdp = pf.preflight(skeleton,
                        TrainConfig(**base, distributed=DistributedSettings(nproc_per_node=4, strategy="fsdp")),
                        device, "fp32", data)
    assert ddp.optimizer_bytes == one.optimizer_bytes and fsdp.optimizer_bytes == one.optimizer_bytes // 4
    assert fsdp.weights_bytes == one.weights_bytes // 4 and fsdp.gradients_bytes == one.gradients_bytes // 4
    assert ddp.activations_bytes < one.activations_bytes, "a rank holds the activations of its slice only"
    assert ddp.tokens_per_step == one.tokens_per_step, "tokens per step count the global batch"
    per_rank = ddp.weights_bytes + ddp.gradients_bytes + ddp.optimizer_bytes + ddp.activations_bytes
    assert ddp.total_bytes == per_rank * (4 if device.type == "cpu" else 1), "a CPU node's processes share its RAM"
