"""`python -m model_build {init-tiny,build,inspect,finetune,search,evaluate,ensure-default}`: argparse front-end.

Each subcommand is one row of COMMANDS: a function that adds its arguments and one that runs it (set_defaults(func=...)).
A UserError (bad input, bad artifact, unsupported host) prints one line and exits 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from artifact.errors import UserError
from artifact.kernels import available_cpus
from artifact.manifest import Variant
from model_build.bases import BASES, DEFAULT_BASE
from model_build.recipes import DEFAULT_SEED, RECIPES, Augmentation, recipe

log = logging.getLogger("model_build")


def _positive(value: str) -> int:
    """argparse type: a whole number >= 1 (a count of threads, epochs, steps, pairs or folds)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return number


def _share(value: str) -> float:
    """argparse type: a share of pairs, above 0 and at most 1."""
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not a share of pairs (above 0, at most 1)")
    return share


def _parser() -> argparse.ArgumentParser:
    description = "Fine-tune, build, verify, inspect and evaluate the model artifacts."
    parser = argparse.ArgumentParser(prog="python -m model_build", description=description)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--threads", type=_positive, default=None, help="torch intra-op threads (default: every CPU to train, 1 to build and evaluate)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(func=run)
    return parser


# ---- each subcommand: its arguments, and what it runs (imports stay inside, so --help needs no torch) ----------


def _init_tiny_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", default="bert", help="config.json's model_type: bert (default) or mpnet")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def _init_tiny(args: argparse.Namespace, threads: int) -> None:
    from model_build.tiny import init_tiny

    print(init_tiny(args.out, family=args.family, seed=args.seed, force=args.force))


def _build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", type=Path, required=True, help="a local fine-tuned classifier (BERT or MPNet) folder")
    p.add_argument("--out", type=Path, required=True, help="folder to create; holds one sub-folder per variant")
    p.add_argument(
        "--variant",
        action="append",
        choices=[*Variant, "all"],
        help="repeat for several (default: all; int8-calibrated and openvino-int8 need --calibration-data, openvino-int8 the build extra)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument(
        "--seq-buckets",
        default="16,32,48,64,80,96,112,128",
        help="column buckets to verify for shape-bucketed serving (comma-separated; '' for none)",
    )
    p.add_argument("--tolerance", type=float, default=None, help="max |logit difference| int8 vs fp32 on the parity pairs")
    p.add_argument("--float-layers", default="", help="regular expression on Linear names the int8 variants keep in fp32")
    p.add_argument(
        "--float-layers-in", action="append", default=[], help="the variant that keeps --float-layers (repeat; default: every int8 one)"
    )
    p.add_argument("--two-step", action="store_true", help="prepare_dynamic_jit + convert_dynamic_jit instead of quantize_dynamic_jit")
    p.add_argument("--attn", default="eager", choices=["eager", "sdpa"], help="attention implementation to trace")
    p.add_argument("--calibration-data", type=Path, default=None, help="GLUE MRPC folder whose train split calibrates the int8 variants")
    p.add_argument("--calibration-pairs", type=int, default=512, help="train pairs to calibrate on (seeded sample)")
    p.add_argument("--activation-bits", type=int, default=8, choices=[7, 8], help="int8-calibrated activation width")
    p.add_argument(
        "--weight-bits",
        type=int,
        default=7,
        choices=[7, 8],
        help="int8-calibrated weight width: 7 (default) runs exactly on every x86-64 CPU; 8 with 8-bit activations needs VNNI",
    )
    p.add_argument("--name", default=None, help="model name recorded in the manifest (default: the folder name)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def _build(args: argparse.Namespace, threads: int) -> None:
    from model_build.build import DEFAULT_INT8_TOLERANCE, BuildOptions, build

    opts = BuildOptions(
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        seq_buckets=tuple(int(b) for b in args.seq_buckets.split(",") if b.strip()),
        variants=() if not args.variant or "all" in args.variant else tuple(dict.fromkeys(args.variant)),
        tolerance=DEFAULT_INT8_TOLERANCE if args.tolerance is None else args.tolerance,
        two_step=args.two_step,
        attn_implementation=args.attn,
        name=args.name,
        force=args.force,
        calibration_data=args.calibration_data,
        calibration_pairs=args.calibration_pairs,
        activation_bits=args.activation_bits,
        weight_bits=args.weight_bits,
        float_layers=args.float_layers,
        float_layer_variants=tuple(args.float_layers_in),
    )
    manifests = build(args.model_dir, args.out, opts)
    print(f"{'variant':15s} {'MB':>8s} {'max|dlogit|':>12s} {'max|dscore|':>12s} {'argmax agree':>12s}  path")
    for variant, m in manifests.items():
        p = m.parity
        figures = f"{p['max_abs_logit_diff']:12.2e} {p['max_abs_score_diff']:12.2e} {p['argmax_agreement']:12.1%}"
        print(f"{variant:15s} {m.size_bytes / 1e6:8.1f} {figures}  {args.out / variant}")


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _inspect(args: argparse.Namespace, threads: int) -> None:
    from model_build.inspect_artifact import inspect, render

    report = inspect(args.artifact)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else render(report))


def _base_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_BASE, choices=list(BASES), help=f"the base checkpoint (default: {DEFAULT_BASE})")
    p.add_argument("--base-model", type=Path, default=None, help="a local checkpoint folder instead of --model's")
    p.add_argument("--cache", type=Path, default=Path("model-cache"), help="model cache (mpnet-base is assembled there)")


def _base_model(args: argparse.Namespace) -> Path:
    from model_build.bases import base

    return args.base_model or base(args.model).locate(args.cache)


def _finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True, help="folder with GLUE MRPC train.tsv and dev.tsv")
    p.add_argument("--out", type=Path, required=True)
    _base_arguments(p)
    p.add_argument("--recipe", default=None, choices=list(RECIPES), help="(default: --model's)")
    p.add_argument("--epochs", type=_positive, default=None, help="override the recipe's")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--batch-size", type=_positive, default=None, help="override the recipe's")
    p.add_argument("--augmentation", default=None, choices=list(Augmentation), help="override the recipe's")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--max-steps", type=_positive, default=None)
    p.add_argument("--limit-train", type=_positive, default=None)
    p.add_argument("--limit-dev", type=_positive, default=None)
    p.add_argument("--teacher", type=Path, default=None, help="for a recipe that distils: the teacher's fine-tuned checkpoint")
    p.add_argument("--force", action="store_true")


def _finetune(args: argparse.Namespace, threads: int) -> None:
    from model_build.bases import base
    from model_build.finetune import FinetuneConfig, finetune

    overrides = {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": args.batch_size, "augmentation": args.augmentation}
    chosen = replace(recipe(args.recipe or base(args.model).recipe), **{k: v for k, v in overrides.items() if v is not None})
    limits = {"max_steps": args.max_steps, "limit_train": args.limit_train, "limit_dev": args.limit_dev}
    cfg = FinetuneConfig(chosen, args.seed, threads, teacher=args.teacher, **limits)
    report = finetune(args.data_dir, args.out, base_model=_base_model(args), config=cfg, force=args.force)
    figures = f"dev F1 {report.dev_f1:.4f}, accuracy {report.dev_accuracy:.4f}"
    print(f"{report.steps} steps in {report.seconds:.0f} s; {figures} -> {args.out}")


def _search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True, help="folder with GLUE MRPC train.tsv")
    p.add_argument("--json", type=Path, required=True, help="write every fold's figures and the choice here")
    p.add_argument("--candidate", action="append", choices=list(RECIPES), help="repeat (default: --model's search grid)")
    p.add_argument("--folds", type=_positive, default=3)
    p.add_argument("--seed", type=int, action="append", help=f"repeat for several (default: {DEFAULT_SEED})")
    _base_arguments(p)
    p.add_argument("--limit-train", type=_positive, default=None, help="only the first N train pairs (smoke runs)")
    p.add_argument("--max-steps", type=_positive, default=None, help="stop each fold's training after N steps (smoke runs)")
    p.add_argument("--teacher-search", type=Path, default=None, help="for candidates that distil: the teacher's search JSON")


def _search(args: argparse.Namespace, threads: int) -> None:
    from model_build.bases import base
    from model_build.cascade import read_search
    from model_build.search import render, search, write

    result = search(
        args.data_dir,
        args.candidate or base(args.model).search_grid,
        folds=args.folds,
        seeds=args.seed or (DEFAULT_SEED,),
        base_model=_base_model(args),
        threads=threads,
        limit_train=args.limit_train,
        max_steps=args.max_steps,
        teacher_search=None if args.teacher_search is None else read_search(args.teacher_search),
    )
    write(result, args.json)
    print(render(result))


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifact", type=Path, action="append", required=True, help="an artifact folder; repeat to compare")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--split", default="dev", choices=["dev", "train"])
    p.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--padding", default="fixed", choices=["fixed", "buckets", "auto"], help="fixed (default): the tutorial's 8x128, comparable times"
    )


def _evaluate(args: argparse.Namespace, threads: int) -> None:
    from model_build.evaluate import evaluate_artifacts, render_table

    results = evaluate_artifacts(args.artifact, args.data_dir, split=args.split, limit=args.limit, padding=args.padding)
    print(render_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def _ensure_default_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", type=Path, default=Path("model-cache"), help="git-ignored folder for checkpoints and artifacts")
    p.add_argument("--data-dir", type=Path, required=True, help="GLUE MRPC folder (fine-tuning, and calibrating the int8 variants)")
    p.add_argument("--model-dir", type=Path, default=None, help="serve this local MRPC checkpoint instead of fine-tuning")
    p.add_argument(
        "--model",
        default=DEFAULT_BASE,
        choices=[*BASES, "cascade"],
        help=f"the base to fine-tune (default: {DEFAULT_BASE}), or cascade: both models and the cascade (prints PARASERVE_MODELS)",
    )


def _ensure_default(args: argparse.Namespace, threads: int) -> None:
    """Print the folder and nothing else on stdout: scripts/serve.sh serves what it reads there. What libraries print
    while building goes to stderr, at the file-descriptor level (NNCF draws its progress bars on stdout, and the first
    clean-clone start once tried to serve "Statistics collection ━━━ 100% ...")."""
    from model_build.default_model import ensure_cascade, ensure_default_artifacts

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        if args.model == "cascade":
            artifacts: Any = ensure_cascade(args.cache, args.data_dir)
        else:
            artifacts = ensure_default_artifacts(args.cache, args.data_dir, args.model_dir, args.model)
    finally:
        sys.stdout.flush()  # what Python buffered for stdout meanwhile goes to stderr too
        os.dup2(saved, 1)
        os.close(saved)
    print(artifacts)


def _cascade_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fast-search", type=Path, required=True, help="the fast model's `search` JSON (its held-out scores)")
    p.add_argument("--accurate-search", type=Path, required=True, help="the accurate model's `search` JSON")
    p.add_argument("--fast-candidate", default=None, help="the recipe whose folds to use (default: the search's choice)")
    p.add_argument("--accurate-candidate", default=None, help="the recipe whose folds to use (default: the search's choice)")
    p.add_argument("--data-dir", type=Path, required=True, help="GLUE MRPC folder (train's labels; dev is not read)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--points", type=float, default=0.5, help="the goal: F1 within this many points of the accurate model")
    goal.add_argument("--max-escalated", type=_share, default=None, help="the goal instead: the best F1 escalating at most this share")
    p.add_argument("--fast-name", default="minilm-l6-mrpc", help="the fast model's manifest name")
    p.add_argument("--accurate-name", default="mpnet-base-mrpc", help="the accurate model's manifest name")
    p.add_argument("--name", default="cascade")
    p.add_argument("--out", type=Path, required=True, help="folder to write cascade.json into")


def _cascade(args: argparse.Namespace, threads: int) -> None:
    from model_build.cascade import AtMostShare, WithinPoints, choose_band, read_search, render, write

    chosen = choose_band(
        read_search(args.fast_search),
        read_search(args.accurate_search),
        args.data_dir,
        goal=WithinPoints(args.points) if args.max_escalated is None else AtMostShare(args.max_escalated),
        fast_candidate=args.fast_candidate,
        accurate_candidate=args.accurate_candidate,
    )
    path = write(args.out, args.name, args.fast_name, args.accurate_name, chosen)
    print(render(chosen))
    print(f"-> {path}")


Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, int], None], str]
COMMANDS: dict[str, Command] = {
    "init-tiny": (_init_tiny_arguments, _init_tiny, "write a tiny random classifier checkpoint, BERT or MPNet (tests, demos)"),
    "build": (_build_arguments, _build, "trace, quantize, verify and write artifacts"),
    "inspect": (_inspect_arguments, _inspect, "print an artifact's manifest, op counts, size and int8 weight scales"),
    "finetune": (_finetune_arguments, _finetune, "fine-tune a base model on MRPC train by a recipe; dev is scored once, at the end"),
    "search": (_search_arguments, _search, "choose a fine-tuning recipe by k-fold cross-validation on MRPC train (dev is not read)"),
    "evaluate": (_evaluate_arguments, _evaluate, "F1, accuracy, time and size of artifacts on MRPC, as the service feeds them"),
    "cascade": (
        _cascade_arguments,
        _cascade,
        "choose a cascade's band on MRPC train from two searches' held-out scores",
    ),
    "ensure-default": (
        _ensure_default_arguments,
        _ensure_default,
        "print the default artifacts folder, fine-tuning and building it if needed",
    ),
}
# Training uses every core (~30 vs ~14 train pairs/s on 2); inference measured fastest at 1 thread per process on 2 cores.
TRAINING_COMMANDS = ("finetune", "search")


def _quiet_transformers() -> None:
    try:
        import transformers
    except ImportError:
        return
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _run(args: argparse.Namespace) -> int:
    import torch

    threads = args.threads or (available_cpus() if args.command in TRAINING_COMMANDS else 1)
    torch.set_num_threads(threads)
    args.func(args, threads)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a UserError (bad input, bad artifact, unsupported host) prints one line and returns 2."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _quiet_transformers()
    try:
        return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
