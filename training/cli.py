"""The `flexserve` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_REPO = Path("artifacts/model_repository")


def _train(args: argparse.Namespace) -> int:
    from training.pipeline import FAMILIES, BuildConfig, build

    families = list(FAMILIES) if args.family == "all" else [args.family]
    config = BuildConfig(out=args.out, checkpoints=args.checkpoints, quick=args.quick, synthetic=args.synthetic,
                         seed=args.seed, device=args.device, register=not args.no_register)
    manifest = build(families, config)
    for family in families:
        section = manifest["families"][family]
        for variant in section["variants"]:
            print(f"{variant['name']:<26} {section['metric']} {variant['metrics'][section['metric']]:.4f}  "
                  f"params {variant['params']:>9,}  {variant['size_bytes'] / 1e6:7.2f} MB")
    return 0


def _report(args: argparse.Namespace) -> int:
    from training.report import report

    return report(args.repo, markdown=args.markdown, plot=args.plot, json_out=args.json, rounds=args.rounds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train every variant and write the model repository")
    train.add_argument("--family", choices=["cnn", "rnn", "recsys", "all"], default="all")
    train.add_argument("--quick", action="store_true", help="small subsets and few epochs (~2 minutes for all)")
    train.add_argument("--out", type=Path, default=DEFAULT_REPO, help=f"model repository (default {DEFAULT_REPO})")
    train.add_argument("--checkpoints", type=Path, default=None, help="PyTorch checkpoints (default: beside --out)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--synthetic", action="store_true", help="generated data instead of the real datasets")
    train.add_argument("--no-register", action="store_true", help="skip the BentoML model store")
    train.set_defaults(func=_train)

    report = commands.add_parser("report", help="variant table: test metric, size, ORT CPU latency; target checks")
    report.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    report.add_argument("--markdown", type=Path, help="also write the tables as Markdown")
    report.add_argument("--plot", type=Path, help="also plot accuracy against latency (PNG)")
    report.add_argument("--json", type=Path, help="also write the rows as JSON")
    report.add_argument("--rounds", type=int, default=40, help="timed runs per variant and batch size")
    report.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"flexserve {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
