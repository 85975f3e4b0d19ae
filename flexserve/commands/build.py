"""Build the model repository: `flexserve train`, `flexserve report`."""

from __future__ import annotations

import argparse
from pathlib import Path

from contract.manifest import DEFAULT_REPOSITORY
from flexserve.commands import command, repo_option
from training import BUILT_IN_FAMILIES


def _train(args: argparse.Namespace) -> int:
    from training.pipeline import BuildConfig, build

    families = list(BUILT_IN_FAMILIES) if args.family == "all" else [args.family]
    config = BuildConfig(
        out=args.out,
        checkpoints=args.checkpoints,
        quick=args.quick,
        synthetic=args.synthetic,
        seed=args.seed,
        seeds=args.seeds,
        device=args.device,
        register=not args.no_register,
        labels_per_class=args.labels_per_class,
        compare_single_task=args.compare_single_task,
    )
    shape = [f"--{n}" for n in ("clients", "rounds", "fraction", "strategy") if getattr(args, n) is not None]
    if shape and not args.federated:
        raise ValueError(f"{', '.join(shape)} shape a federated run: add --federated")
    if args.federated:
        from training.federated import build as build_federated

        if args.family != "recsys":
            raise ValueError("--federated trains the recommender: add --family recsys")
        manifest = build_federated(config, federated_settings(args))
    else:
        manifest = build(families, config)
    for family in families:
        section = manifest.families[family]
        for variant in section.variants:
            print(
                f"{variant.name:<26} {section.metric} {variant.metrics[section.metric]:.4f}  "
                f"params {variant.params:>9,}  {variant.size_bytes / 1e6:7.2f} MB"
            )
    return 0


def federated_options(group) -> None:
    """The federation's shape (train --federated, bench-federated). Their defaults are
    training.federated.FederatedSettings's, stated in the help (a unit test holds them equal)."""
    group.add_argument("--clients", type=int, help="clients the users are partitioned into (default: 100)")
    group.add_argument("--rounds", type=int, help="federated rounds (default: 30)")
    group.add_argument("--fraction", type=float, help="share of the clients that train each round (default: 0.5)")
    group.add_argument("--strategy", choices=["fedavg", "fedprox", "fedadam"], help="aggregation (default: fedavg)")


def federated_settings(args: argparse.Namespace):
    from training.federated import FederatedSettings

    chosen = {"clients": args.clients, "rounds": args.rounds, "fraction": args.fraction, "strategy": args.strategy}
    return FederatedSettings(**{k: v for k, v in chosen.items() if v is not None})


def add_train(commands) -> None:
    p = command(
        commands,
        "build the model repository",
        "train",
        "train every variant (full, distilled; fp32, fp16, int8) and write the model repository",
        "flexserve train --quick --family rnn",
        _train,
    )
    p.add_argument("--family", choices=[*BUILT_IN_FAMILIES, "all"], default="all", help="which family to train")
    p.add_argument("--quick", action="store_true", help="small subsets and few epochs (~6 minutes for all on 2 cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY, help="the model repository to write")
    p.add_argument("--checkpoints", type=Path, help="where PyTorch checkpoints go (default: beside --out)")
    p.add_argument("--seed", type=int, default=0, help="seeds data splits, initial weights and shuffling")
    fed = p.add_argument_group("federated (the recommender, with Flower; after its centralized build)")
    fed.add_argument(
        "--federated",
        action="store_true",
        help="train recsys federated (Flower's simulation engine) and add its variants to the family",
    )
    federated_options(fed)
    p.add_argument(
        "--seeds",
        type=int,
        help="train the students (with and without the teacher) with this many seeds, from --seed on: the "
        "report's distillation gain is their paired difference with its 95%% interval (default: 1 with "
        "--quick, else 3)",
    )
    p.add_argument(
        "--labels-per-class",
        type=int,
        help="transferred families (digits, from the image family's full CNN): the labels per class their "
        "served models learn from (default: every training row; other families ignore it); the transfer "
        "study compares this, 10, 50 and all labels per class (10 and all with --quick)",
    )
    p.add_argument(
        "--compare-single-task",
        action="store_true",
        help="multi-task families (text_multitask): also train each head alone as a single-task model of the "
        "same encoder size, for the report's comparison (never served; at full data they add ~24 minutes "
        "here, ~65%% more than the family alone)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train")
    p.add_argument("--synthetic", action="store_true", help="generated data instead of the real datasets")
    p.add_argument("--no-register", action="store_true", help="skip copying it into BentoML's model store")


def _distill_search(args: argparse.Namespace) -> int:
    from training.recipes import markdown, run

    seeds = tuple(range(args.seed, args.seed + max(args.seeds, 0)))
    result = run(
        args.family,
        args.checkpoints,
        seeds,
        train_rows=args.train_rows,
        val_rows=args.val_rows,
        names=args.recipe,
        out=args.out,
        device=args.device,
    )
    print(markdown(result))
    if args.out:
        print(f"wrote {args.out}/distill_search_{args.family}.json and .md")
    return 0


def add_distill_search(commands) -> None:
    p = command(
        commands,
        "build the model repository",
        "distill-search",
        "distillation recipes against the same student without a teacher, on validation, paired by seed",
        "flexserve distill-search --family cnn --seeds 3 --out reports/",
        _distill_search,
    )
    p.add_argument("--family", default="cnn", help="whose student to distil (the families with recipes: cnn)")
    p.add_argument(
        "--checkpoints",
        type=Path,
        default=DEFAULT_REPOSITORY.parent / "checkpoints",
        help="where `flexserve train` left the trained full model (the teacher)",
    )
    p.add_argument("--seeds", type=int, default=3, help="runs of every recipe, seeds --seed, --seed + 1, ...")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--train-rows", type=int, help="a seeded subset of the training split (default: all of it)")
    p.add_argument(
        "--val-rows",
        type=int,
        help="a seeded subset of the validation split, for a first look: fewer rows, a noisier comparison "
        "(default: all of it)",
    )
    p.add_argument("--recipe", action="append", help="only this recipe (repeatable; default: every one)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train")
    p.add_argument("--out", type=Path, help="also write the runs as JSON and Markdown into this folder")


def _report(args: argparse.Namespace) -> int:
    from loadtest.report import report

    return report(args.repo, markdown=args.markdown, plot=args.plot, json_out=args.json, rounds=args.rounds)


def add_report(commands) -> None:
    p = command(
        commands,
        "build the model repository",
        "report",
        "the variant table (test metric, size, ONNX Runtime CPU latency) and its targets",
        "flexserve report --markdown reports/variants.md --plot reports/variants.png",
        _report,
    )
    repo_option(p)
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    p.add_argument("--plot", type=Path, help="also plot accuracy against latency (PNG) here")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--rounds", type=int, default=40, help="timed runs per variant and batch size")


def _import(args: argparse.Namespace) -> int:
    from training.importing import ImportRequest, import_models

    request = ImportRequest(
        family=args.family,
        models=tuple(args.onnx),
        eval_set=args.eval,
        repo=args.repo,
        task=args.task,
        labels=args.labels,
        replace=args.replace,
        register=not args.no_register,
    )
    section, left_out = import_models(request)
    if not args.no_profile:
        from loadtest.profile import ProfileSettings, profile

        section = profile(args.repo, ProfileSettings(), [args.family]).families[args.family]
    for variant in section.variants:
        p50 = (variant.latency_ms or {}).get("1", {}).get("p50")
        timing = f"  p50 {p50:.3f} ms at one row" if p50 is not None else ""
        print(
            f"{variant.name:<32} {section.metric} {variant.metrics[section.metric]:.4f}  "
            f"{variant.size_bytes / 1e3:9,.1f} kB{timing}"
        )
    for line in left_out:
        print(f"left out: {line}")
    return 0


def add_import(commands) -> None:
    p = command(
        commands,
        "build the model repository",
        "import",
        "bring your own ONNX models: fp32/fp16/int8 variants, measured and profiled, served at once",
        "flexserve import --family churn --onnx big.onnx --onnx small.onnx --eval eval.npz",
        _import,
    )
    p.add_argument("--family", required=True, help="the new family's name (lowercase letters, digits, _)")
    p.add_argument(
        "--onnx",
        type=Path,
        action="append",
        required=True,
        help="an ONNX model with a dynamic batch axis; repeat for more models of the same signature",
    )
    p.add_argument(
        "--eval",
        type=Path,
        required=True,
        help="an .npz: one array per model input, named as the input, "
        "plus labels (class ids) or targets (values), or neither (then measured against the largest model)",
    )
    p.add_argument(
        "--task",
        choices=["classification", "regression"],
        help="what the model does (default: from labels/targets, else from the output's shape)",
    )
    p.add_argument("--labels", type=Path, help="a text file with one class name per line")
    repo_option(p, "the model repository to add the family to")
    p.add_argument("--replace", action="store_true", help="replace a family of the same name")
    p.add_argument("--no-profile", action="store_true", help="skip profiling (the gateway needs profiles to route)")
    p.add_argument("--no-register", action="store_true", help="skip copying the repository into BentoML's model store")
