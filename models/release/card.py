"""The model card: a Hugging Face README.md (YAML metadata + markdown) recording lineage, training, evaluation, gate."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import yaml
from huggingface_hub import metadata_load

from llmops.infra.config import PipelineConfig
from llmops.infra.markdown import markdown_table
from llmops.models.records import (
    CompressionReport,
    DatasetRef,
    EvalReport,
    GateDecision,
    KernelChoice,
    SampleParams,
    TokenizerRef,
    TrainRef,
)
from llmops.models.training.preflight import markdown

_ORIGIN = {"scratch": "trained from scratch", "full": "fine-tuned (every weight)",
           "lora": "fine-tuned with LoRA (adapters merged)", "distill": "distilled from a teacher"}
_METHOD_TAGS = {"full": ["fine-tuned"], "lora": ["fine-tuned", "lora"], "distill": ["distilled"]}


def render_card(*, name: str, version: int, config: PipelineConfig, dataset: DatasetRef, tokenizer: TokenizerRef,
                run: TrainRef, evaluation: EvalReport, compression: Optional[CompressionReport],
                store_key: Callable[[str], str]) -> str:
    """The card of ``name`` version ``version``, stored at ``models/<name>/versions/<version>/README.md``.

    Artifacts are named by their store keys and linked relative to the card, so the card stays true
    when the store is copied or synced elsewhere; ``store_key`` maps a record's URI to its key. A
    local base model is named by its folder, not by a path of the training machine.
    """
    test = evaluation.splits.get("test")
    # the run record names the base actually trained from (a local folder resolved): "<path or id>@<hash>"
    base = None if run.method == "scratch" else (
        run.base_model.rpartition("@")[0] if run.base_model else config.model.pretrained)
    local_base = base is not None and _is_local(base)
    base_name = Path(base).expanduser().name if local_base else base
    metadata = {
        **_license(run.method, base),
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        **({"base_model": base} if base and not local_base else {}),  # a hub id: the Hub links it
        "tags": ["llmops", "causal-lm", *_METHOD_TAGS.get(run.method, [_shape(run, config)])],
        "datasets": [f"{dataset.name}@{dataset.sha256[:16]}"],
        "model-index": [{
            "name": f"{name}-v{version}",
            "results": [{
                "task": {"type": "text-generation", "name": "Causal language modeling"},
                "dataset": {"name": dataset.name, "type": dataset.name, "revision": dataset.sha256[:16],
                            "split": "test"},
                "metrics": [
                    {"type": "perplexity", "value": round(test.perplexity, 4), "name": "Test perplexity"},
                    {"type": "bits_per_byte", "value": round(test.bits_per_byte, 4), "name": "Test bits per byte"},
                ],
            }],
        }] if test else [],
    }
    gate = evaluation.gate
    parts = [
        "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---",
        f"# {name} — version {version}",
        f"A {_kind(run, config)} decoder-only language model "
        f"{_ORIGIN[run.method]} by llmops ({run.parameters:,} parameters, context {config.train.block_size} tokens).",
        "## Data lineage",
        markdown_table(["what", "value"], [
            ["dataset snapshot", _link(store_key(dataset.uri))],
            ["dataset sha256", f"`{dataset.sha256}`"],
            ["sources", ", ".join(f"`{s}`" for s in dataset.sources)],
            *[[f"{split} records", ref.records] for split, ref in dataset.splits.items()],
            ["quarantined", ", ".join(f"{k}: {v}" for k, v in sorted(dataset.rejected.items())) or "none"],
            ["tokenizer", f"{tokenizer.kind}, {tokenizer.vocab_size} tokens, sha256 `{tokenizer.sha256[:16]}`"],
            ["training run", f"`{run.run_id}`"],
            *([["base model", _base_lineage(run.base_model, base_name, local_base)]] if run.base_model else []),
            *([["teacher", _teacher(run)]] if run.distillation else []),
        ]),
        *_adaptation_section(dataset, store_key),
        "## Training",
        markdown_table(["what", "value"], [
            ["steps", run.steps], ["tokens seen", f"{run.tokens_seen:,}"], ["wall-clock", f"{run.wall_s:.1f} s"],
            ["device / precision", f"{run.device} / {run.precision}"],
            *([["kernels", _kernels(run.kernels)]] if run.kernels else []),
            *([["model shape", f"{run.sized.shape} (model.preset=auto): {run.sized.reason}"]] if run.sized else []),
            ["final train loss", f"{run.final_train_loss:.4f}"],
            ["final validation loss", f"{run.final_val_loss:.4f}" if run.final_val_loss is not None else "n/a"],
            ["resumed from step", run.resumed_from_step if run.resumed_from_step is not None else "no"],
            ["loss curve", _link(store_key(run.loss_plot_uri)) if run.loss_plot_uri else "n/a"],
            ["metrics", _link(store_key(run.metrics_uri))],
        ]),
        "Configuration:\n\n```yaml\n" + yaml.safe_dump(
            {"model": config.model.model_dump(), "train": config.train.model_dump()}, sort_keys=False) + "```",
        *_preflight_section(run),
        "## Evaluation",
        markdown_table(["split", "documents", "tokens", "loss (nats/token)", "perplexity", "bits/byte"], [
            [s.split, s.documents, s.tokens, f"{s.loss:.4f}", f"{s.perplexity:.2f}", f"{s.bits_per_byte:.4f}"]
            for s in evaluation.splits.values()
        ]),
        "## Gate decision",
        f"**{'promoted' if gate.promote else 'not promoted'}** — {gate.reason}",
        *([gate_slices_table(gate)] if gate.slices else []),
        "## Samples",
        markdown_table(["setting", "knobs", "prompt", "completion"], [
            [s.setting, _knobs(s.params), s.prompt, s.completion]
            for s in evaluation.samples
        ]),
    ]
    if compression:
        parts += compression_section(compression)
    parts += [
        "## Intended use and limitations",
        "A small model trained on the sources above, for the text they contain. It has not been "
        "evaluated for safety or factuality and should not be used to make decisions about people."
        + (f" Fine-tuned from `{base_name}`: that model's license and limitations apply too." if base else ""),
    ]
    return "\n\n".join(parts) + "\n"


def gate_slices_table(gate: GateDecision) -> str:
    """An adaptation gate's slices: candidate and production bits/byte, the paired CI, the rule, the verdict."""
    return markdown_table(
        ["slice", "documents", "candidate", "production", "difference", "95% CI", "rule", "verdict"],
        [[s.name, s.documents, f"{s.candidate_bits_per_byte:.4f}", f"{s.production_bits_per_byte:.4f}",
          f"{s.difference:+.4f}", f"[{s.ci_low:+.4f}, {s.ci_high:+.4f}]",
          f"CI below {s.limit:+.4f} ({'must improve' if s.rule == 'improve' else 'no regression'})",
          "passes" if s.passed else "fails"] for s in gate.slices],
    )


def _adaptation_section(dataset: DatasetRef, store_key: Callable[[str], str]) -> list[str]:
    """How a drift-triggered retrain made its data (empty for any other version)."""
    a = dataset.adaptation
    if a is None:
        return []
    return ["## Adaptation", (
        f"Warm-started from version {a.base_version} on the traffic of {a.window_start.isoformat()} to "
        f"{a.window_end.isoformat()} (prompts only, never the model's completions), mixed with a replay of "
        f"v{a.base_version}'s training data ({_link(store_key(a.base_dataset))}). The validation split is held-out "
        "traffic the model never trained on; the test split is the base version's own."),
        markdown_table(["what", "records"], [
            ["traffic records read", f"{a.traffic_records} (of {a.sampled_from} in the window)"],
            ["duplicates", a.duplicates],
            ["invalid", ", ".join(f"{k}: {v}" for k, v in sorted(a.invalid.items())) or "none"],
            ["redacted (changed)", a.redacted], ["dropped by the redaction hook", a.dropped_by_hook],
            ["excluded: overlap an evaluation document", a.eval_overlap],
            ["excluded: overlap a held-out prompt", a.holdout_overlap],
            ["held out (gate and reference profile)", a.holdout], ["traffic trained on", a.traffic_train],
            ["replayed documents", a.replay],
        ])]


def _kernels(choice: KernelChoice) -> str:
    """The kernels a run trained with and why: measured here, reused, configured, or not worth measuring."""
    return f"{choice.label} ({choice.source}): {choice.reason}"


def _link(key: str) -> str:
    """A store key, linked relative to the card (``models/<name>/versions/<n>/README.md``: four levels down)."""
    return f"[`{key}`](../../../../{key})"


def _is_local(base: str) -> bool:
    path = Path(base).expanduser()
    return path.is_absolute() or path.exists() or base.startswith(".")


def _base_lineage(identity: str, name: str, local: bool) -> str:
    """``identity`` is ``<path or hub id>@<content hash>``: a local folder is shown by its name and hash."""
    digest = identity.rpartition("@")[2]
    return f"local folder `{name}`, content `{digest}`" if local else f"`{identity}`"


def _knobs(params: Optional[SampleParams]) -> str:
    """A sample's generation settings in a few words ("-" for reports that predate recording them)."""
    if params is None:
        return "-"
    parts = [f"{params.max_new_tokens} tokens"]
    if not params.do_sample:
        parts.append("greedy")
    else:
        parts.append(f"temperature {params.temperature:g}")
        parts += [f"top-k {params.top_k}"] if params.top_k else []
        parts += [f"top-p {params.top_p:g}"] if params.top_p is not None and params.top_p < 1 else []
    parts += [f"repetition penalty {params.repetition_penalty:g}"] if params.repetition_penalty != 1 else []
    parts += [f"seed {params.seed}"] if params.do_sample and params.seed is not None else []  # greedy draws nothing
    return ", ".join(parts)


def _license(method: str, base: Optional[str]) -> dict:
    """The license keys of the front matter: for a fine-tune, its base model's, from a local base folder's README.md."""
    if method == "scratch" or (method == "distill" and not base):
        # Trained from scratch, the weights come only from this project's code (MIT) and the user's own data, so
        # no upstream model's terms apply; the config has no field for the data owner to choose another license.
        return {"license": "mit"}
    readme = Path(base).expanduser() / "README.md" if base else None
    try:
        meta = (metadata_load(readme) if readme and readme.is_file() else None) or {}
    except (OSError, ValueError, yaml.YAMLError):
        meta = {}
    if not isinstance(meta.get("license"), str):
        return {}  # a hub id, or no readable license: omitted (unknown) rather than guessed
    # a relative license_link names a file in the base's folder, not in this card's
    return {k: meta[k] for k in ("license", "license_name", "license_link")
            if k in meta and (k != "license_link" or "://" in str(meta[k]))}


def _preflight_section(run: TrainRef) -> list[str]:
    """The numbers checked before training, beside what training took (a subsection of Training)."""
    if run.preflight is None:
        return []
    verdict = "fitted" if run.preflight.fits else "did not fit (train.preflight=warn)"
    return ["### Preflight", f"Estimated before training; the run {verdict} in memory.",
            markdown(run.preflight, actual_s=run.wall_s)]


def _kind(run: TrainRef, config: PipelineConfig) -> str:
    if run.method == "distill":
        return "pruned" if run.base_model else _shape(run, config)
    return _shape(run, config) if run.method == "scratch" else "pretrained"


def _teacher(run: TrainRef) -> str:
    """Who taught a distilled run, and how (its lineage)."""
    d = run.distillation
    version = f" (version {d.teacher_version})" if d.teacher_version is not None else ""
    how = f"{d.loss}, alpha {d.alpha:g}, temperature {d.temperature:g}" + (f", top-{d.top_k}" if d.top_k else "")
    return f"`{d.teacher}`{version}, sha256 `{d.teacher_sha256[:16]}`; {how}"


def _shape(run: TrainRef, config: PipelineConfig) -> str:
    """The preset, or for ``model.preset=auto`` the shape sized to the budget."""
    return run.sized.shape if run.sized else config.model.preset


def compression_section(report: CompressionReport) -> list[str]:
    """The variants beside fp32: speed, size, parity, and why each is or is not served."""
    def num(value, fmt):
        return "—" if value is None else format(value, fmt)

    rows = [["fp32", f"{report.parent_bytes:,}", *(f"{report.parent_tokens_per_s[b]:.1f}" for b in (1, 8)),
             num(report.parent_bits_per_byte, ".4f"), "—", "—", "—", "parent"]]
    for v in report.variants:
        interval = "—" if v.ci_low is None else f"{v.bpb_increase:+.4f} [{v.ci_low:+.4f}, {v.ci_high:+.4f}]"
        rows.append([v.variant, f"{v.bytes:,}", *(f"{v.tokens_per_s[b]:.1f}" for b in (1, 8)),
                     num(v.bits_per_byte, ".4f"), interval, num(v.mean_kl, ".5f"), num(v.top1_agreement, ".3f"),
                     "yes" if v.servable else "no: " + "; ".join(v.reasons)])
    return ["## Compression", markdown_table(
        ["variant", "bytes", "tokens/s (batch 1)", "tokens/s (batch 8)", "bits/byte", "increase (95% CI)",
         "KL (nats/token)", "top-1 agreement", "servable"], rows),
        f"`serve.variant: auto` serves **{report.serve}** on CPU ({report.documents} test documents scored)."]
