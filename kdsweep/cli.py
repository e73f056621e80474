"""`kdsweep run | plan`: the command line. Bad input exits 2 with one line, before Ray starts."""
from __future__ import annotations

import argparse
import sys

from .config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdsweep", description="Sweep knowledge distillation and pruning with Ray Tune.")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run or resume a sweep")
    plan = sub.add_parser("plan", help="validate a config and print its plan (same as run --dry-run)")
    for sp in (run, plan):
        sp.add_argument("config", help="YAML config file, e.g. configs/smoke.yaml")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, value parsed as YAML (repeatable): --set kd.alpha=[0.9]")
        sp.add_argument("--storage", default="./runs", help="where experiments live (default ./runs)")
        sp.add_argument("--name", default=None, help="experiment name (default: the config's name)")
    run.add_argument("--address", default=None, help="existing Ray cluster to use (default: RAY_ADDRESS or local)")
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan without starting Ray")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kdsweep` console script."""
    args = _parser().parse_args(argv)
    from .data import DataError
    from .models import ModelError
    from .sweeper import run

    try:
        run(args.config, overrides=args.overrides, storage=args.storage, name=args.name,
            address=getattr(args, "address", None), dry_run=args.cmd == "plan" or args.dry_run)
    except (ConfigError, DataError, ModelError) as exc:
        print(f"kdsweep: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
