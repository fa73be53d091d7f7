"""`hyfunc eval …` and `hyfunc bench …` commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_eval_demo(args: argparse.Namespace) -> int:
    from hyfunc.cli.errors import CliError
    from hyfunc.eval.demo import evaluate_demo

    cascade = _load_cascade(args)

    if args.n < 1 or args.batch_size < 1:
        raise CliError("--limit/-n and --batch-size must be at least 1")
    metrics = evaluate_demo(cascade, n=args.n, seed=args.seed, batch_size=args.batch_size, progress=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "mismatches"}))
    else:
        for key, value in metrics.items():
            if key != "mismatches":
                print(f"{key:>18}: {value}")
        for miss in metrics["mismatches"][: args.show]:
            print(json.dumps(miss, ensure_ascii=False), file=sys.stderr)
    return 0


def _load_cascade(args: argparse.Namespace):
    from hyfunc.cascade import Cascade
    from hyfunc.cli.errors import CliError
    from hyfunc.config import ConfigError, load_config
    from hyfunc.models.bundle import ModelsError

    try:
        config = load_config(args.config, {"models.dir": args.models} if args.models else None)
        return Cascade.load(config)
    except (ConfigError, ModelsError) as err:
        raise CliError(str(err)) from None


def cmd_eval_bfcl(args: argparse.Namespace) -> int:
    from hyfunc.cli.errors import CliError
    from hyfunc.eval.bfcl import BfclUnavailable, evaluate_bfcl

    cascade = _load_cascade(args)
    out = Path(args.out) if args.out else None
    try:
        results = evaluate_bfcl(cascade, args.categories, limit=args.limit, out_dir=out,
                                progress=not args.json, log=(lambda _m: None) if args.json else print)
    except (BfclUnavailable, FileNotFoundError, ValueError) as err:
        raise CliError(str(err)) from None
    overall = results["overall"]
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{'overall':>22}: {overall['accuracy_unweighted']:.2%} (unweighted mean of categories), "
              f"{overall['accuracy_weighted']:.2%} weighted, n={overall['n']}")
        if out:
            print(f"raw outputs and results.json in {out}")
    return 0


def cmd_eval_seal(args: argparse.Namespace) -> int:
    from hyfunc.cli.errors import CliError
    from hyfunc.eval.seal import evaluate_seal

    cascade = _load_cascade(args)
    out = Path(args.out) if args.out else None
    try:
        results = evaluate_seal(cascade, args.split, data=args.data, limit=args.limit, out_dir=out,
                                progress=not args.json, log=(lambda _m: None) if args.json else print)
    except (FileNotFoundError, ValueError) as err:
        raise CliError(str(err)) from None
    if args.json:
        print(json.dumps(results))
    elif out:
        print(f"raw outputs and results.json in {out}")
    return 0


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from hyfunc.cli.errors import CliError
    from hyfunc.config import ConfigError, load_config
    from hyfunc.models.bundle import Manifest, ModelsError, load_retriever, resolve_part
    from hyfunc.models.retriever import identity_retriever
    from hyfunc.training.retriever import intent_encoder_for

    try:
        config = load_config(args.config, {"models.dir": args.models} if args.models else None)
        models = config.models_dir()
        if models is None:
            raise CliError("no models configured: pass --models DIR")
        encoder, _path = intent_encoder_for(str(models))
        manifest = Manifest.read(Path(models))
        own = resolve_part(Path(models), manifest.retriever_path)
        retrievers, thresholds = {}, {}
        for spec in args.retriever or ["identity", f"models={own}"]:
            label, _, path = spec.partition("=")
            if label == "identity" and not path:
                retrievers[label] = identity_retriever(int(encoder.model.config.hidden_size))
                continue
            if not path:
                label, path = Path(label).name, label
            if not (Path(path) / "config.json").is_file():
                raise CliError(f"--retriever {spec}: {path} is not a retriever directory (no config.json)")
            retrievers[label] = load_retriever(Path(path))
            # the gate's threshold: a general-data run's report, or the models' own manifest
            report = Path(path) / "report.json"
            if report.is_file():
                thresholds[label] = float(json.loads(report.read_text())["threshold"])
            elif Path(path).resolve() == own.resolve():
                thresholds[label] = manifest.relevance_threshold
        for spec in args.threshold or []:
            label, _, value = spec.partition("=")
            try:
                thresholds[label] = float(value)
            except ValueError:
                raise CliError(f"--threshold {spec}: expected LABEL=NUMBER") from None
    except (ConfigError, ModelsError) as err:
        raise CliError(str(err)) from None
    from hyfunc.eval.bfcl import compare_retrievers

    try:
        results = compare_retrievers(encoder, retrievers, args.categories, limit=args.limit, thresholds=thresholds)
    except (FileNotFoundError, ValueError) as err:
        raise CliError(str(err)) from None
    results = {"limit": args.limit, "categories": results}
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results))
        return 0
    print("| category | questions | retriever | recall@1 | recall@3 | R-precision | gate pass |")
    print("|---|---|---|---|---|---|---|")
    for category, entry in results["categories"].items():
        for label in [*retrievers, "bm25"]:
            recall = entry.get(label, {})
            gate = entry.get("gate_pass", {}).get(label, "–")
            print(f"| {category} | {entry['questions']} | {label} | {recall.get('recall@1', '–')} | {recall.get('recall@3', '–')} | {recall.get('r_precision', '–')} | {gate} |")
    return 0


def _named_dirs(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise SystemExit(f"--tokenizer expects NAME=DIR, got {value!r}")
        out[name] = directory
    return out


def cmd_bench_backends(args: argparse.Namespace) -> int:
    """`hyfunc bench backends`: its own run (two LMS engines), outside `bench all`."""
    from hyfunc.bench.backends import MODES, run_backends_bench
    from hyfunc.bench.report import default_out_dir
    from hyfunc.cli.errors import CliError

    if args.repeat < 1:
        raise CliError("--repeat must be at least 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else default_out_dir()
    models = Path(args.demo_models or "models/demo")
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    run_backends_bench(
        models, out, device=args.device, dtype=dtype, jobs=args.throughput_jobs, same_n=args.same_n,
        modes=tuple(args.modes.split(",")) if args.modes else MODES,
        bfcl=tuple(args.bfcl.split(",")) if args.bfcl else (), bfcl_n=args.bfcl_n, repeat=args.repeat, same_jump=not args.same_no_jump,
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), log=lambda m: print(m, file=sys.stderr),
    )
    print((out / "backends.md").read_text())
    print(f"written: {out / 'backends.json'}, {out / 'backends.md'}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from hyfunc.bench.suite import KINDS, BenchOptions, run_bench

    if args.kind == "backends":
        return cmd_bench_backends(args)

    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    options = BenchOptions(
        device=args.device, dtype=args.dtype, out=Path(args.out) if args.out else None,
        per_category=args.per_category, throughput_jobs=args.throughput_jobs, service_jobs=args.service_jobs,
        demo_models=Path(args.demo_models) if args.demo_models else None, demo_n=args.demo_n,
        tokens_limit=args.tokens_limit, threads=args.threads, tokenizers=_named_dirs(args.tokenizer), base=args.base,
        trained=Path(args.trained) if args.trained else None,
    )
    report, out = run_bench(kinds, options, log=lambda m: print(m, file=sys.stderr))
    print((out / "bench.md").read_text())
    print(f"written: {out / 'bench.json'}, {out / 'bench.md'}", file=sys.stderr)
    return 1 if report["errors"] else 0


def _add_cascade_options(parser: argparse.ArgumentParser) -> None:
    """What every accuracy evaluation reads: the models and config `_load_cascade` loads, and the output form."""
    parser.add_argument("--models", help="models directory (default: the config's models.dir)")
    parser.add_argument("--config")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_eval_commands(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate the configured models")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True)
    demo = ev_sub.add_parser("demo", help="held-out accuracy on the demo task")
    _add_cascade_options(demo)
    demo.add_argument("-n", "--limit", dest="n", type=int, default=400, help="held-out examples (default 400)")
    demo.add_argument("--batch-size", type=int, default=16, help="requests per cascade batch (default 16)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--show", type=int, default=5, help="mismatches to print")
    demo.set_defaults(func=cmd_eval_demo)

    bfcl = ev_sub.add_parser("bfcl", help="BFCL v4 accuracy with the official AST checker (extra `bfcl`)")
    bfcl.add_argument("--categories", nargs="+",
                      help="single-turn BFCL v4 categories or BFCL groups (non_live, live, single_turn); "
                           "default: every non-live category in full (simple_python, simple_java, "
                           "simple_javascript, multiple, parallel, parallel_multiple, irrelevance)")
    bfcl.add_argument("--limit", type=int, help="first N questions per category (default: all)")
    bfcl.add_argument("--out", help="write raw outputs and results.json here")
    _add_cascade_options(bfcl)
    bfcl.set_defaults(func=cmd_eval_bfcl)

    seal = ev_sub.add_parser("seal", help="Seal-Tools: exact match of the call multiset, function and parameter F1")
    seal.add_argument("--split", default="test_in_domain", choices=["test_in_domain", "test_out_domain", "dev"])
    seal.add_argument("--data", help="Seal-Tools_Dataset directory (default: $HYFUNC_SEAL_DIR, else the vendored "
                                     "data/seal/, which holds test_in_domain)")
    seal.add_argument("--limit", type=int, help="first N questions (default: all)")
    seal.add_argument("--out", help="write raw outputs and results.json here")
    _add_cascade_options(seal)
    seal.set_defaults(func=cmd_eval_seal)

    retrieval = ev_sub.add_parser("retrieval", help="BFCL retriever recall@1/@3 of several retrievers and BM25, in one run")
    retrieval.add_argument("--retriever", action="append", metavar="LABEL=DIR",
                           help="a retriever directory (repeatable); 'identity' = the untrained residual retriever "
                                "(cosine of the intent embeddings); default: identity and the models' own")
    retrieval.add_argument("--threshold", action="append", metavar="LABEL=NUMBER",
                           help="a relevance threshold for a retriever (default: its report.json, or the models' manifest)")
    retrieval.add_argument("--categories", nargs="+", default=["multiple", "parallel_multiple"])
    retrieval.add_argument("--limit", type=int, help="first N questions per category (default: all)")
    retrieval.add_argument("--models", help="models directory whose intent model embeds (default: the config's)")
    retrieval.add_argument("--config")
    retrieval.add_argument("--out", help="also write the results as JSON here")
    retrieval.add_argument("--json", action="store_true")
    retrieval.set_defaults(func=cmd_eval_retrieval)

    bench = sub.add_parser("bench", help="benchmarks: the cascade against its baselines (JSON + Markdown report)")
    bench.add_argument("kind", choices=["latency", "throughput", "tokens", "service", "memory", "constraints", "pretrained", "backends", "all"])
    bench.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    bench.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                       help="default bfloat16 on cuda, float32 on cpu")
    bench.add_argument("--out", help="report directory (default runs/bench/<timestamp>/)")
    bench.add_argument("--per-category", type=int, default=5, help="BFCL inputs per category for latency (default 5)")
    bench.add_argument("--throughput-jobs", type=int, default=32, help="jobs per batch size (default 32)")
    bench.add_argument("--service-jobs", type=int, default=64, help="jobs for the service run (default 64)")
    bench.add_argument("--demo-models", help="trained demo models (default models/demo when present)")
    bench.add_argument("--demo-n", type=int, default=32, help="demo held-out inputs (default 32)")
    bench.add_argument("--tokens-limit", type=int, default=0, help="BFCL examples per category for tokens (0 = all)")
    bench.add_argument("--threads", type=int, help="torch CPU threads (default torch's)")
    bench.add_argument("--same-n", type=int, default=400,
                       help="bench backends: demo held-out jobs for the same-calls check (default 400; 0: skip)")
    bench.add_argument("--bfcl", metavar="CATEGORIES",
                       help="bench backends: also the same-calls check on a BFCL sample, e.g. simple_python,multiple,parallel")
    bench.add_argument("--bfcl-n", type=int, default=20, help="bench backends: questions per BFCL category (default 20)")
    bench.add_argument("--same-no-jump", action="store_true",
                       help="bench backends: the same-calls checks without jump-forward (default: with)")
    bench.add_argument("--repeat", type=int, default=1,
                       help="bench backends: rounds of all modes, taken in turn; each row is the median round (default 1)")
    bench.add_argument("--batch-sizes", default="1,32", help="bench backends: comma-separated batch sizes (default 1,32)")
    bench.add_argument("--modes", help="bench backends: comma-separated modes (default: all of "
                       "transformers,vllm,vllm-no-jump,vllm-structured,vllm-gold-json)")
    bench.add_argument("--tokenizer", action="append", default=[], metavar="NAME=DIR",
                       help="bench constraints: another vocabulary to measure (repeatable)")
    bench.add_argument("--base", default="smollm2-135m-instruct",
                       help="bench pretrained: the pulled base to serve as the LMS (default smollm2-135m-instruct)")
    bench.add_argument("--trained", help="bench pretrained: a models directory with a fine-tuned base LMS "
                       "(e.g. models/general), measured as served instead of the untuned base")
    bench.set_defaults(func=cmd_bench)
