"""The ``llmops`` command line: run the whole loop, train, serve, monitor, compact traffic, roll back,
and run Prefect locally."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from llmops import __version__
from llmops.flows.local.shutdown import sigterm_as_interrupt


def _environment_defaults() -> None:
    """Before anything imports Prefect: our loggers in Prefect run logs, telemetry off, patient start-up."""
    from llmops.flows.local.server import quiet_prefect_env

    for key, value in {**quiet_prefect_env(), "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)


def load_config(args: argparse.Namespace):
    """The pipeline config from ``--config FILE`` (or defaults) with every ``--set a.b=value`` applied."""
    from llmops.infra.config import PipelineConfig

    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "config", None):
        return PipelineConfig.from_yaml(args.config, overrides)
    return PipelineConfig.from_dict({}, overrides, source="defaults")


def with_sources(config, sources: list):
    """``config`` reading ``sources`` (``llmops train --data``), every path kept exactly as given.

    The override value is JSON, which YAML parses as written; a Python repr doubled backslashes and
    broke on names holding both quote characters.
    """
    return config.with_overrides([f"data.sources={json.dumps([str(s) for s in sources])}"])


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="pipeline config YAML (default: built-in defaults)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set train.max_steps=100 (repeatable)")


def cmd_run(args) -> int:
    from llmops.flows.demo import run_demo

    try:  # SIGTERM takes Ctrl-C's path: the run's exit stack stops the servers it started
        with sigterm_as_interrupt():
            return run_demo(load_config(args), keep_running=args.keep_running)
    except KeyboardInterrupt:
        print("llmops run: interrupted", file=sys.stderr)
        return 130


def cmd_train(args) -> int:
    from llmops.flows.training_pipeline import training_pipeline

    config = load_config(args)
    if args.data:
        config = with_sources(config, args.data)
    report = training_pipeline(config)
    print(f"model {report.model_name} v{report.version.version}: "
          f"{'promoted to production' if report.promoted else 'not promoted'} — {report.evaluation.gate.reason}")
    print(f"model card: {report.model_card_uri}\nloss curve: {report.run.loss_plot_uri}")
    return 0


def cmd_distill(args) -> int:
    from llmops.flows.distill import distill_flow

    config = load_config(args)
    overrides = [f"compress.distill.student_preset={args.student_preset}"] if args.student_preset else []
    if args.prune is not None:
        overrides += ["compress.prune.enabled=true", f"compress.prune.keep={args.prune}"]
    config = config.with_overrides(overrides) if overrides else config
    if args.data:
        config = with_sources(config, args.data)
    report = distill_flow(config, teacher=args.teacher)
    student = "a pruned copy" if report.pruned else config.compress.distill.student_preset
    print(f"student ({student}, {report.run.parameters:,} parameters) registered as {config.model_name} "
          f"v{report.version.version}: {'promoted' if report.promoted else 'not promoted'} — "
          f"{report.evaluation.gate.reason}")
    print(f"model card: {report.version.uri.rsplit('/', 1)[0]}/README.md")
    return 0


def cmd_serve(args) -> int:
    from llmops.infra.settings import get_settings
    from llmops.infra.store import open_store
    from llmops.models.serving import InsecureBind, serve

    config = load_config(args)
    serve_cfg = config.serve.model_copy(update={k: v for k, v in {
        "host": args.host, "port": args.port, "alias": args.alias, "variant": args.variant,
        "insecure": args.insecure or None, "log_format": "json" if args.log_json else None}.items() if v is not None})
    try:
        # uvicorn handles SIGINT and SIGTERM itself (requests finish, the lifespan flushes the captured traffic),
        # then raises the signal again once it has stopped: as a KeyboardInterrupt, that is a clean exit
        with sigterm_as_interrupt():
            serve(open_store(), config.model_name, serve_cfg, Path(get_settings().cache_dir))
    except InsecureBind as exc:
        print(f"llmops serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def cmd_monitor(args) -> int:
    from llmops.flows.offline_monitor import backfill, monitor_files

    config = load_config(args)
    if args.backfill:
        return backfill(config, args.out, start=args.start, end=args.end)
    if not (args.reference and args.current and args.out):
        # status 2 like every usage error: 1 means "alert" under --fail-on-alert
        missing = [f"--{n}" for n in ("reference", "current", "out") if not getattr(args, n)]
        print(f"llmops monitor: error: missing {' '.join(missing)}; it needs --reference FILE --current FILE "
              "--out DIR (or --backfill)", file=sys.stderr)
        return 2
    return monitor_files(config, args.reference, args.current, args.out, model_ref=args.version,
                         model_path=args.model_path, fail_on_alert=args.fail_on_alert)


def cmd_compact(args) -> int:
    from datetime import datetime, timezone

    from llmops.tasks.core.context import store
    from llmops.tasks.core.monitoring import compact_closed_hours

    config = load_config(args)
    name = args.model or config.model_name
    delete = args.delete_jsonl or config.monitor.compact_delete_jsonl
    try:
        before, keys = compact_closed_hours(store(), config, datetime.now(timezone.utc), model=name, everything=True,
                                            delete_jsonl=args.delete_jsonl)
    except ValueError as exc:  # a model name that is not a store key, a grace period shorter than a flush
        print(f"llmops compact: error: {exc}", file=sys.stderr)
        return 2
    print(f"{name}: compacted {len(keys)} closed traffic hour(s) ended before {before:%Y-%m-%d %H:%M} UTC"
          + (", and deleted their compacted JSONL files" if delete else ""))
    for key in keys:
        print(f"  {key}")
    return 0


def cmd_rollback(args) -> int:
    from llmops.infra.store import open_store
    from llmops.models.release import Registry

    name = args.model or load_config(args).model_name
    old, new = Registry(open_store(), name).rollback(args.alias, reason=args.reason)
    print(f"{name}/{args.alias}: version {old} -> {new}")
    return 0


def cmd_models(args) -> int:
    from llmops.infra.store import open_store
    from llmops.models.release import ALIASES, Registry

    name = args.model or load_config(args).model_name
    registry = Registry(open_store(), name)
    aliases = {a: registry.alias(a) for a in ALIASES}
    versions = registry.versions()
    if not versions:
        print(f"model {name!r} has no registered versions in {open_store().uri}")
        return 0
    for v in versions:
        meta = registry.manifest(v).metadata
        tags = ", ".join(a for a, target in aliases.items() if target == v)
        print(f"v{v}\t{f'{meta.test_bits_per_byte:.4f} bits/byte' if meta else ''}\t{tags}")
    return 0


def cmd_deploy(args) -> int:
    from llmops.flows.deployments import deploy_to_pool, prefect_yaml, serve_deployments

    config = load_config(args)
    train_vars = {"gpu_count": args.train_gpus} if args.train_gpus is not None else None
    if args.prefect_yaml:
        args.prefect_yaml.write_text(prefect_yaml(config, args.pool or "llmops", args.train_pool, train_vars),
                                     encoding="utf-8")
        where = f"{args.pool or 'llmops'!r}" + (f" and {args.train_pool!r}" if args.train_pool else "")
        print(f"wrote {args.prefect_yaml}: `prefect deploy --all --prefect-file {args.prefect_yaml}` creates the "
              f"deployments on work pool {where}")
        return 0
    if args.pool:
        ids = deploy_to_pool(config, args.pool, args.train_pool, train_vars)
        print(f"{len(ids)} deployments on work pool {args.pool!r}: start a worker with "
              f"`prefect worker start --pool {args.pool}` where llmops is installed")
        return 0
    try:  # once serving, Prefect's runner handles SIGTERM itself: it stops and exits 0
        with sigterm_as_interrupt():
            serve_deployments(config)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_up(args) -> int:
    from llmops.flows.local.up import run_up

    return run_up(load_config(args), host=args.host, port=args.port)


def cmd_reports(args) -> int:
    import uvicorn

    from llmops.infra.reports import reports_app
    from llmops.infra.store import LocalStore, open_store

    store = open_store()
    if not isinstance(store, LocalStore):
        print(f"llmops reports: error: {store.uri} is not a local store; artifact links to an S3 store are "
              "presigned URLs already", file=sys.stderr)
        return 2
    with sigterm_as_interrupt():
        try:
            uvicorn.run(reports_app(store.root), host=args.host, port=args.port, log_level="info")
        except KeyboardInterrupt:
            pass
    return 0


def cmd_config(args) -> int:
    print(load_config(args).to_yaml(), end="")
    return 0


def _arg(*flags: str, **kwargs) -> tuple[tuple[str, ...], dict]:
    return flags, kwargs


# name, help, handler, options (besides --config and --set, which every command takes)
COMMANDS = [
    ("run", "the main job: train, deploy, serve, monitor, alert and retrain, end to end", cmd_run, [
        _arg("--keep-running", action="store_true", help="leave the servers up at the end (Ctrl-C stops them)")]),
    ("train", "run the training pipeline on the given sources", cmd_train, [
        _arg("--data", nargs="+", help="files, folders, globs, s3:// prefixes, builtin:// corpora")]),
    ("distill", "distill a smaller student from a teacher, then gate and register it", cmd_distill, [
        _arg("--teacher", default="production",
             help="a registered version or alias of the config's model, or a local model folder (default: production)"),
        _arg("--student-preset", help="the student's preset (default: compress.distill.student_preset)"),
        _arg("--prune", type=float, metavar="KEEP",
             help="start the student from the teacher pruned to this fraction of its trunk (e.g. 0.5), then heal it"),
        _arg("--data", nargs="+", help="files, folders, globs, s3:// prefixes, builtin:// corpora")]),
    ("serve", "serve the production model (OpenAI-compatible /v1/completions and /v1/chat/completions)", cmd_serve, [
        _arg("--host"), _arg("--port", type=int),
        _arg("--alias", help="registry alias to serve (default: production)"),
        _arg("--variant", choices=["auto", "fp32", "bf16", "int8"],
             help="auto (default): the fastest variant that passed its gate"),
        _arg("--insecure", action="store_true",
             help="serve a non-loopback --host without an API key (LLMOPS_API_KEY); refused otherwise"),
        _arg("--log-json", action="store_true", help="log one JSON object per line (serve.log_format=json)")]),
    ("monitor", "drift check between two text files, or replay stored traffic windows", cmd_monitor, [
        _arg("--reference", type=Path, help="reference texts (.jsonl with {'text': ...} or .txt)"),
        _arg("--current", type=Path, help="current texts, same formats"),
        _arg("--out", type=Path, help="folder for drift.json, report.html and plots"),
        _arg("--version", default="production", help="registry version or alias whose model scores the texts"),
        _arg("--model-path", type=Path, help="a local save_pretrained folder instead of the registry"),
        _arg("--fail-on-alert", action="store_true", help="exit with status 1 when the verdict is alert"),
        _arg("--backfill", action="store_true", help="replay stored traffic windows through the drift check"),
        _arg("--start", help="backfill from this ISO time (default: oldest traffic)"),
        _arg("--end", help="backfill until this ISO time (default: now)")]),
    ("compact", "compact closed hours of the traffic log into Parquet (what the monitor flow does first)",
     cmd_compact, [
        _arg("--model", help="model name (default: the config's model_name)"),
        _arg("--delete-jsonl", action="store_true",
             help="delete an hour's JSONL files once its compacted manifest is committed")]),
    ("rollback", "move an alias back to the version it pointed at before", cmd_rollback, [
        _arg("--model", help="model name (default: the config's model_name)"), _arg("--alias", default="production"),
        _arg("--reason", default="manual rollback")]),
    ("models", "list registered versions and aliases", cmd_models, [_arg("--model")]),
    ("deploy", "register deployments (schedules, drift trigger) with the Prefect API and serve them", cmd_deploy, [
        _arg("--pool", help="create them on this work pool instead, for its workers to run (nothing is served here)"),
        _arg("--prefect-yaml", type=Path, metavar="FILE",
             help="write them as a prefect.yaml for `prefect deploy --all` (on --pool, default llmops) and exit"),
        _arg("--train-pool", help="put train and retrain on this work pool instead (a GPU pool)"),
        _arg("--train-gpus", type=int, metavar="N",
             help="job variable gpu_count=N for them (pools made from infra/pools/kubernetes.json)")]),
    ("up", "start a local Prefect server (SQLite, UI) and serve the deployments", cmd_up, [
        _arg("--host", default="127.0.0.1"), _arg("--port", type=int, default=4200)]),
    ("reports", "serve the local store's reports read-only over HTTP (artifact links: LLMOPS_REPORT_BASE_URL)",
     cmd_reports, [_arg("--host", default="127.0.0.1"), _arg("--port", type=int, default=8090)]),
    ("config", "print the effective configuration as YAML", cmd_config, []),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmops", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llmops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, handler, options in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        _add_config_args(p)
        for flags, kwargs in options:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(func=handler)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    _environment_defaults()
    from llmops.infra.config import ConfigError
    from llmops.infra.store import StoreError
    from llmops.models.compression import DistillationError
    from llmops.models.data import IngestError, TokenizerError
    from llmops.models.model import VariantError
    from llmops.models.release import RegistryError
    from llmops.models.training import TrainingError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DistillationError, IngestError, RegistryError, StoreError, TokenizerError, TrainingError,
            VariantError, FileNotFoundError) as exc:
        print(f"llmops {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
