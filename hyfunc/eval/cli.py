"""`hyfunc eval …` and `hyfunc bench …` commands."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_eval_demo(args: argparse.Namespace) -> int:
    from hyfunc.cascade import Cascade
    from hyfunc.cli import CliError
    from hyfunc.config import ConfigError, load_config
    from hyfunc.models.bundle import ModelsError

    try:
        config = load_config(args.config, {"models.dir": args.models} if args.models else None)
        cascade = Cascade.load(config)
    except (ConfigError, ModelsError) as err:
        raise CliError(str(err)) from None
    from hyfunc.eval.demo import evaluate_demo

    metrics = evaluate_demo(cascade, n=args.n, seed=args.seed, progress=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "mismatches"}))
    else:
        for key, value in metrics.items():
            if key != "mismatches":
                print(f"{key:>18}: {value}")
        for miss in metrics["mismatches"][: args.show]:
            print(json.dumps(miss, ensure_ascii=False), file=sys.stderr)
    return 0


def add_eval_commands(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate the configured models")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True)
    demo = ev_sub.add_parser("demo", help="held-out accuracy on the demo task")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--models", help="models directory (default: the config's models.dir)")
    demo.add_argument("--config")
    demo.add_argument("-n", type=int, default=400, help="held-out examples")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--show", type=int, default=5, help="mismatches to print")
    demo.set_defaults(func=cmd_eval_demo)
