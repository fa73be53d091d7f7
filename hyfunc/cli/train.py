"""`hyfunc train …` commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from hyfunc.cli.errors import CliError

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train_demo.yaml"


def _recipe(path: str | None, overrides: dict | None = None):
    from hyfunc.training.pipeline import Recipe

    data: dict = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise CliError(f"training config {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise CliError(f"{p}: not valid YAML: {err}") from None
        data = loaded.get("training", loaded) if isinstance(loaded, dict) else None
        if not isinstance(data, dict):
            raise CliError(f"{p}: expected a mapping (optionally under 'training:')")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Recipe.from_dict(data)
    except (TypeError, ValueError) as err:
        raise CliError(f"training config: {err}") from None


def _guard_out(recipe, force: bool) -> None:
    """A models directory that already holds models (the committed models/demo, say) is only
    overwritten when asked: --force, or --out naming another directory."""
    out = Path(recipe.out_dir)
    if (out / "hyfunc.json").exists() and not force:
        raise CliError(f"{out} already holds models (hyfunc.json): pass --out DIR for a new directory, "
                       "or --force to overwrite it")


def cmd_train_all(args: argparse.Namespace) -> int:
    from hyfunc.training.model_card import write_model_card
    from hyfunc.training.pipeline import train_all

    recipe = _recipe(args.config, {"out_dir": args.out, "work_dir": args.work_dir, "device": args.device})
    _guard_out(recipe, args.force)
    report = train_all(recipe)
    command = "hyfunc train all" + (f" --config {args.config}" if args.config else "")
    write_model_card(Path(recipe.out_dir), report, command)
    print(json.dumps({k: v for k, v in report.items() if k != "recipe"}, indent=2, default=str))
    return 0


def cmd_train_demo(args: argparse.Namespace) -> int:
    """The shipped demo models: the whole recipe, then the held-out evaluation and the model card."""
    import time

    from hyfunc.training.model_card import write_model_card
    from hyfunc.training.pipeline import train_all

    started = time.time()
    recipe = _recipe(str(DEMO_CONFIG), {"out_dir": args.out, "work_dir": args.work_dir, "device": args.device})
    _guard_out(recipe, args.force)
    report = train_all(recipe)
    from hyfunc.cascade.decoding import resolve_decoding
    from hyfunc.cascade.engine import Cascade
    from hyfunc.config import load_config
    from hyfunc.eval.demo import evaluate_demo
    from hyfunc.models.bundle import ModelBundle

    # Score the models the way the default config serves them (the manifest's decoding settings:
    # extractive values on), and with free value decoding for comparison.
    bundle = ModelBundle.load(recipe.out_dir)
    served = resolve_decoding(load_config().cascade.model_copy(update={"top_k": recipe.top_k}), bundle.manifest.decoding)
    metrics = evaluate_demo(Cascade(bundle, served, None), n=recipe.n_heldout, seed=recipe.seed + 1)
    report["heldout"] = {k: v for k, v in metrics.items() if k != "mismatches"}
    report["heldout"]["decoding"] = f"copy_values={served.copy_values} (the manifest's decoding settings)"
    free = served.model_copy(update={"copy_values": False})
    free_metrics = evaluate_demo(Cascade(bundle, free, None), n=recipe.n_heldout, seed=recipe.seed + 1, progress=False)
    report["heldout_free_decoding"] = {k: v for k, v in free_metrics.items() if k != "mismatches"}
    report["total_seconds"] = round(time.time() - started, 1)
    write_model_card(Path(recipe.out_dir), report, "hyfunc train demo")
    print(json.dumps(report["heldout"], indent=2))
    print(f"total {report['total_seconds']} s")
    return 0


def cmd_train_export(args: argparse.Namespace) -> int:
    from hyfunc.training.lms import latest_checkpoint
    from hyfunc.training.pipeline import export_checkpoint

    recipe = _recipe(args.config, {"work_dir": args.work_dir})
    checkpoints = Path(recipe.work_dir) / "lms_checkpoint"
    if args.step == "latest":
        checkpoint = latest_checkpoint(checkpoints)
        if checkpoint is None:
            raise CliError(f"{checkpoints} holds no checkpoint")
    elif args.step.isdigit() and int(args.step) == 0:
        checkpoint = None
    elif args.step.isdigit():
        checkpoint = checkpoints / f"step-{int(args.step):06d}"
        if not (checkpoint / "trainer_state.pt").is_file():
            kept = sorted(d.name for d in checkpoints.glob("step-*")) if checkpoints.is_dir() else []
            raise CliError(f"no checkpoint {checkpoint}; kept: {', '.join(kept) or 'none'}")
    else:
        raise CliError(f"--step must be a step number, 0 or 'latest', got {args.step!r}")
    try:
        out = export_checkpoint(recipe, checkpoint, Path(args.out))
    except FileNotFoundError as err:
        raise CliError(str(err)) from None
    print(f"models directory {out} from {checkpoint or 'the untuned LMS'}")
    return 0


def cmd_compare_intent(args: argparse.Namespace) -> int:
    """The intent-model choice, measured: the recipe's intent model vs a causal LML trained here."""
    from hyfunc.training.intent_lm import IntentLMConfig, compare_intent_models

    recipe = _recipe(args.config, {"work_dir": args.work_dir, "device": args.device})
    report = compare_intent_models(recipe, IntentLMConfig(steps=args.lm_steps))
    rows = report["results"]
    keys = [k for k in rows[0] if k != "intent"]
    print("| intent model | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for row in rows:
        print(f"| {row['intent']} | " + " | ".join(str(row[k]) for k in keys) + " |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def _stage_command(stage: str):
    def run(args: argparse.Namespace) -> int:
        """One stage, in the work directory only: the stages before it run first unless done
        (their `<stage>.done` markers), the ones after it do not, and no models directory is
        written (`hyfunc train all` or `export` does that)."""
        from hyfunc.training.pipeline import train_all

        recipe = _recipe(args.config, {"work_dir": args.work_dir, "device": args.device})
        report = train_all(recipe, stop_after=stage)
        print(json.dumps(report, indent=2, default=str))
        return 0

    return run


def cmd_train_compare_lms(args: argparse.Namespace) -> int:
    from hyfunc.bench.lms_choice import compare_lms, markdown, parse_variant, write_report

    overrides: dict = {"work_dir": args.work_dir}
    if args.steps is not None and args.steps < 1:
        raise CliError("--steps must be at least 1")
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ValueError as err:
        raise CliError(str(err)) from None
    recipe = _recipe(args.config, overrides)
    if args.steps is not None:
        from dataclasses import replace

        recipe = replace(recipe, lms=replace(recipe.lms, steps=args.steps, save_every=args.steps))
    try:
        report = compare_lms(recipe, variants, args.demo_n, args.seal_limit, args.seal_data, args.serve_config)
    except (FileNotFoundError, ValueError) as err:
        raise CliError(str(err)) from None
    if args.out:
        write_report(report, Path(args.out))
    print(markdown(report))
    return 0


def add_train_commands(sub) -> None:
    train = sub.add_parser("train", help="training pipeline")
    tsub = train.add_subparsers(dest="train_command", required=True)
    for name, help_text in (
        ("embed", "LML soft tokens and function embeddings, cached and resumable"),
        ("retriever", "InfoNCE retriever; recall@1/@k; relevance threshold"),
        ("lms", "projector + LMS with selective SFT"),
    ):
        p = tsub.add_parser(name, help=help_text)
        p.add_argument("--config", help="training YAML (default: the demo recipe)", default=str(DEMO_CONFIG))
        p.add_argument("--work-dir")
        p.add_argument("--device")
        p.set_defaults(func=_stage_command(name))
    everything = tsub.add_parser("all", help="the whole recipe from one config")
    everything.add_argument("--config", required=True)
    everything.add_argument("--out", help="models directory to write (default: the recipe's out_dir)")
    everything.add_argument("--force", action="store_true", help="overwrite a models directory that already holds models")
    everything.add_argument("--work-dir")
    everything.add_argument("--device")
    everything.set_defaults(func=cmd_train_all)
    compare = tsub.add_parser(
        "compare-intent", help="held-out retriever quality with the recipe's intent model vs a causal LML trained here"
    )
    compare.add_argument("--config", default=str(DEMO_CONFIG))
    compare.add_argument("--work-dir")
    compare.add_argument("--device")
    compare.add_argument("--lm-steps", type=int, default=1500, help="training steps of the from-scratch causal LML")
    compare.add_argument("--out", help="also write the report as JSON here")
    compare.set_defaults(func=cmd_compare_intent)
    choice = tsub.add_parser(
        "compare-lms", help="train LMS variants (base, LoRA layers, bf16, ...) on the same data and score them side by side"
    )
    choice.add_argument("--config", required=True, help="the training recipe the variants start from")
    choice.add_argument("--variant", action="append", required=True, metavar="NAME:KEY=VALUE,...",
                        help="e.g. smollm2: or gemma:lms_init=base:gemma3-270m or top8:lms.lora_layers=8 (repeat)")
    choice.add_argument("--steps", type=int, help="LMS steps of every variant (default: the recipe's)")
    choice.add_argument("--demo-n", type=int, default=100, help="demo held-out examples scored (default %(default)s)")
    choice.add_argument("--seal-limit", type=int, default=0,
                        help="also score the first N Seal-Tools test_in_domain questions (needs --seal-data or $HYFUNC_SEAL_DIR)")
    choice.add_argument("--seal-data", help="the Seal-Tools dataset directory")
    choice.add_argument("--serve-config", default="configs/default.yaml", help="serving config the variants are scored with")
    choice.add_argument("--work-dir", help="root of the variants' work directories (default: the recipe's)")
    choice.add_argument("--out", help="write lms_choice.json and lms_choice.md here")
    choice.set_defaults(func=cmd_train_compare_lms)
    demo = tsub.add_parser("demo", help="reproduce the shipped demo models (models/demo)")
    demo.add_argument("--out", help="models directory to write (default: models/demo, which needs --force)")
    demo.add_argument("--force", action="store_true", help="overwrite a models directory that already holds models")
    demo.add_argument("--work-dir")
    demo.add_argument("--device")
    demo.set_defaults(func=cmd_train_demo)
    export = tsub.add_parser("export", help="a models directory from a recipe's work directory and one LMS checkpoint")
    export.add_argument("--config", required=True)
    export.add_argument("--work-dir")
    export.add_argument("--step", help="checkpoint step (step-NNNNNN under <work_dir>/lms_checkpoint), "
                        "'latest', or 0 for the untuned LMS", default="latest")
    export.add_argument("--out", required=True, help="models directory to write")
    export.set_defaults(func=cmd_train_export)
