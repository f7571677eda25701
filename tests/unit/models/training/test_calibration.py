"""Kernels and precision chosen by measurement: what is timed, the numerical check, and where the decision is kept."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from llmops.infra.config import PipelineConfig
from llmops.infra.store import LocalStore
from llmops.models.records import KernelChoice
from llmops.models.training import calibration, precision
from llmops.models.training.calibration import Kernels, calibrate, choose_kernels, options
from llmops.models.training.checkpoint import Checkpointer, TrainingError
from llmops.models.training.loop import train
from tests.helpers import train_stdlib_run
from tests.unit.models.training.test_loop import config, patterned_blocks, tiny_model

CPU = torch.device("cpu")
FP32, ONEDNN, BF16 = Kernels("fp32", "aten", False), Kernels("fp32", "onednn", False), Kernels("bf16", "aten", False)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def native_bf16(monkeypatch):
    """Set whether this CPU computes bf16 natively (the tests run on CPUs with and without it)."""
    def set_to(native: bool) -> None:
        monkeypatch.setattr(precision, "cpu_native_bf16", lambda: native)
        monkeypatch.setattr(calibration, "cpu_native_bf16", lambda: native)
    return set_to


def test_the_options_are_what_the_cpu_offers_and_explicit_settings_narrow_them(native_bf16):
    native_bf16(False)
    assert options(config(), CPU) == [FP32, ONEDNN]
    native_bf16(True)
    assert options(config(), CPU) == [FP32, ONEDNN, BF16]
    assert options(config(cpu_matmul="aten"), CPU) == [FP32, BF16]
    assert options(config(precision="fp32", cpu_matmul="onednn"), CPU) == [ONEDNN]
    assert options(config(precision="bf16"), CPU) == [BF16]
    assert options(config(compile=True, precision="fp32", cpu_matmul="aten"), CPU) == [Kernels("fp32", "aten", True)]


def test_calibration_times_each_option_and_chooses_the_fastest_that_computes_what_fp32_computes(native_bf16):
    native_bf16(True)  # bf16 autocast is timed (emulated where the CPU lacks it) and checked like the others
    choice = calibrate(tiny_model(), patterned_blocks(), config(), CPU, "key")
    assert [t.setting for t in choice.timings] == [FP32.label, ONEDNN.label, BF16.label]
    assert all(t.passed and t.step_s > 0 for t in choice.timings)
    fastest = min(choice.timings, key=lambda t: t.step_s)
    default = next(t for t in choice.timings if t.setting == calibration.static_default(config(), CPU).label)
    chosen = fastest if fastest.step_s * (1 + calibration.MARGIN) <= default.step_s else default
    assert (choice.label, choice.source) == (chosen.setting, "calibrated")
    assert f"{choice.timings[0].step_s / chosen.step_s:.2f}x the speed of fp32 + ATen matmuls" in choice.reason
    # the same weights and batches: only rounding separates the settings' losses
    assert max(abs(t.loss - choice.timings[0].loss) for t in choice.timings) < 0.01 * choice.timings[0].loss


@pytest.mark.parametrize("onednn_s, chosen", [(0.97, FP32), (0.90, ONEDNN)])
def test_a_setting_must_beat_the_default_by_more_than_the_noise_to_replace_it(monkeypatch, native_bf16, onednn_s,
                                                                             chosen):
    native_bf16(False)
    monkeypatch.setattr(calibration, "static_default", lambda cfg, device: calibration.REFERENCE)
    seconds = {FP32.label: 1.0, ONEDNN.label: onednn_s}
    monkeypatch.setattr(calibration, "measure", lambda kernels, *a, **k: (seconds[kernels.label], 2.0))
    choice = calibrate(tiny_model(), patterned_blocks(), config(), CPU, "key")
    assert choice.label == chosen.label
    if chosen == FP32:
        assert "(the default)" in choice.reason and "within the 5% that so few steps cannot tell" in choice.reason


class HalfLinear(TorchFunctionMode):
    """A broken kernel: every linear layer's output halved."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return out * 0.5 if func is F.linear else out


class BrokenOneDNN(calibration.ForwardContext):
    def __call__(self):
        return HalfLinear() if self.onednn else super().__call__()


def test_a_setting_whose_loss_strays_from_fp32_is_rejected_whatever_its_speed(native_bf16, monkeypatch):
    native_bf16(False)
    monkeypatch.setattr(calibration, "ForwardContext", BrokenOneDNN)
    choice = calibrate(tiny_model(), patterned_blocks(), config(), CPU, "key")
    assert [(t.setting, t.passed) for t in choice.timings] == [(FP32.label, True), (ONEDNN.label, False)]
    assert choice.label == FP32.label and f"rejected, loss off fp32's: {ONEDNN.label}" in choice.reason
    with pytest.raises(TrainingError, match="no setting train.precision=fp32 and train.cpu_matmul=onednn allow reached "
                                            "fp32's loss within 1%"):
        calibrate(tiny_model(), patterned_blocks(), config(precision="fp32", cpu_matmul="onednn"), CPU, "key")


def choose(tmp_path, cache: str = "cache", **overrides) -> KernelChoice:
    cfg = config(calibration_share=1.0, **overrides)
    return choose_kernels(tiny_model(), patterned_blocks(), cfg, CPU, store=LocalStore(tmp_path / "store"),
                          run_prefix="runs/r1", cache_dir=tmp_path / cache, step_s=0.01)


def no_calibration(*args, **kwargs):
    raise AssertionError("calibrated again")


def test_the_decision_is_kept_for_the_run_and_for_the_machine(tmp_path, monkeypatch, native_bf16):
    native_bf16(False)
    first = choose(tmp_path)
    assert first.source == "calibrated" and len(first.timings) == 2
    store = LocalStore(tmp_path / "store")
    assert KernelChoice.model_validate(store.get_json("runs/r1/calibration.json")) == first
    monkeypatch.setattr(calibration, "calibrate", no_calibration)
    resumed = choose(tmp_path, cache="another-machine")  # a resumed run reads its own decision, wherever it runs
    assert resumed == first.model_copy(update={"source": "run"})
    store.delete("runs/r1/calibration.json")
    again = choose(tmp_path)  # a second run of the same shapes on this machine pays nothing
    assert again == first.model_copy(update={"source": "cached"})
    # what the machine's decision is keyed on: another batch, thread count or model shape is measured anew
    key = calibration.fingerprint(tiny_model(), config(calibration_share=1.0), CPU, 1)
    assert calibration._key(key) == first.fingerprint
    assert calibration._key(calibration.fingerprint(tiny_model(), config(batch_size=4), CPU, 1)) != first.fingerprint
    assert calibration._key({**key, "threads": key["threads"] + 1}) != first.fingerprint


def test_no_calibration_where_it_would_not_pay_or_there_is_nothing_to_choose(tmp_path, monkeypatch, native_bf16):
    native_bf16(False)
    monkeypatch.setattr(calibration, "calibrate", no_calibration)
    cfg = config(max_steps=20)  # 3 settings x 4 steps would be over 5% of a 20-step run
    short = choose_kernels(tiny_model(), patterned_blocks(), cfg, CPU, store=None, run_prefix=None,
                           cache_dir=tmp_path, step_s=0.05)
    assert short.source == "default" and "calibration skipped: ~" in short.reason
    assert "over 5% of this run's ~" in short.reason
    assert short.label == calibration.static_default(cfg, CPU).label  # oneDNN only where MKL is known to be slow
    untimed = choose_kernels(tiny_model(), patterned_blocks(), config(calibration_share=1.0), CPU, store=None,
                             run_prefix=None, cache_dir=tmp_path, step_s=None)
    assert untimed.source == "default" and "train.preflight_steps=0" in untimed.reason
    explicit = choose_kernels(tiny_model(), patterned_blocks(), config(precision="fp32", cpu_matmul="aten"), CPU,
                              store=None, run_prefix=None, cache_dir=tmp_path, step_s=0.05)
    assert (explicit.source, explicit.label) == ("explicit", FP32.label)


def test_bf16_on_a_cpu_without_native_bf16_trains_with_a_warning_and_fp16_is_refused(tmp_path, native_bf16, caplog):
    native_bf16(False)
    blocks = patterned_blocks()
    with caplog.at_level(logging.WARNING, logger="llmops.training"):
        out = train(tiny_model(), blocks, blocks[:16], config(max_steps=3, precision="bf16"),
                    Checkpointer(LocalStore(tmp_path), "ck"), tmp_path / "m.jsonl")
    assert out.precision == "bf16" and out.state.step == 3
    assert "train.precision=bf16 on a CPU without native bf16" in caplog.text
    with pytest.raises(TrainingError, match="train.precision=fp16 needs CUDA"):
        train(tiny_model(), blocks, blocks[:16], config(max_steps=3, precision="fp16"),
              Checkpointer(LocalStore(tmp_path / "b"), "ck"), tmp_path / "b.jsonl")


def test_a_run_records_its_kernels(tmp_path, native_bf16):
    native_bf16(False)
    config = PipelineConfig.from_dict({
        "tokenizer": {"vocab_size": 300}, "model": {"preset": "tiny"},
        "train": {"max_steps": 12, "max_minutes": None, "batch_size": 8, "block_size": 32, "eval_every": 12,
                  "checkpoint_every": 12, "num_threads": 1, "calibration_share": 1.0}})  # 2 settings x 4 steps < 12
    done = train_stdlib_run(tmp_path, config)
    kernels = done.run.kernels
    assert kernels.source == "calibrated" and kernels.label in {FP32.label, ONEDNN.label}
    assert KernelChoice.model_validate(done.store.get_json(f"runs/{done.run.run_id}/calibration.json")) == kernels
