"""`kdsweep run | plan | analyze | status`: the command line. Bad input exits 2 with one line, before Ray starts."""
from __future__ import annotations

import argparse
import sys

from .errors import ConfigError, DataError, FacetError, ModelError, StatusError

EXIT_CODES = {0: "done: every variant ok (or the plan printed, the analysis written)",
              1: "the sweep ran, but some variant did not finish ok (listed on stderr)",
              2: "bad input, before any compute and with nothing written: one line naming the key (config, data, "
                 "model, facet, experiment folder), or another driver holds the experiment's lock"}


def parser() -> argparse.ArgumentParser:
    from .version import __version__

    p = argparse.ArgumentParser(prog="kdsweep", description="Sweep knowledge distillation and pruning with Ray Tune.")
    p.add_argument("--version", action="version", version=f"kdsweep {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run or resume a sweep")
    plan = sub.add_parser("plan", help="validate a config and print its plan (same as run --dry-run)")
    for sp in (run, plan):
        sp.add_argument("config", help="YAML config file, e.g. configs/smoke.yaml")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, value parsed as YAML (repeatable): --set kd.alpha=[0.9]")
        sp.add_argument("--storage", default="./runs", help="where experiments live (default ./runs)")
        sp.add_argument("--name", default=None, help="experiment name (default: the config's name)")
        sp.add_argument("--estimate", action="store_true",
                        help="time a few real training steps of each kind here and print the sweep's expected wall "
                             "time, a range (seconds of timing; a run keeps it for `kdsweep status`)")
    plan.add_argument("--list", dest="list_variants", action="store_true",
                      help="also print every variant: key, stage, epochs, parent")
    run.add_argument("--address", default=None, help="existing Ray cluster to use (default: RAY_ADDRESS or local)")
    plan.add_argument("--address", default=None,
                      help="Ray cluster whose CPUs and GPUs the plan counts trials on (default: RAY_ADDRESS or here)")
    an = sub.add_parser("analyze", help="write results.csv, tradeoffs.md and metrics_grid.png for an experiment")
    an.add_argument("experiment", help="experiment folder <storage>/<name> (local path or s3://...)")
    an.add_argument("--out", default=None, help="output folder (default <experiment>/analysis)")
    an.add_argument("--facet", default=None, metavar="KEY",
                    help="swept key (sweep: section) to split metrics_grid.png by, e.g. student.arch "
                         "(default: the first swept key that varies; none without a sweep)")
    st = sub.add_parser("status", help="how far an experiment is (planned, done, failed, running, ETA); no Ray needed")
    st.add_argument("experiment", help="experiment folder <storage>/<name> (local path or s3://...)")
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan without starting Ray")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kdsweep` console script."""
    args = parser().parse_args(argv)
    if args.cmd == "analyze":
        return _analyze(args.experiment, args.out, args.facet)
    if args.cmd == "status":
        return _status(args.experiment)
    from .sweeper import run

    try:
        exp = run(args.config, overrides=args.overrides, storage=args.storage, name=args.name,
                  address=getattr(args, "address", None), dry_run=args.cmd == "plan" or args.dry_run,
                  estimate=args.estimate, list_variants=getattr(args, "list_variants", False))
    except (ConfigError, DataError, ModelError) as exc:
        print(f"kdsweep: error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "run" and not args.dry_run:
        from .analysis import load_experiment

        bad = load_experiment(exp).rows.query("status != 'ok'")
        if len(bad):
            print(f"kdsweep: {len(bad)} variant(s) did not finish ok: {', '.join(bad.key)}", file=sys.stderr)
            return 1
    return 0


def _status(experiment: str) -> int:
    from .status import experiment_status, format_status

    try:
        print(format_status(experiment_status(experiment)))
    except StatusError as exc:
        print(f"kdsweep: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _analyze(experiment: str, out: str | None, facet: str | None = None) -> int:
    from .analysis import analyze, headline_table, load_experiment

    loaded = load_experiment(experiment)
    if loaded.rows.empty and not loaded.planned:
        print(f"kdsweep: error: {experiment!r} holds no kdsweep results (expected results/*.parquet)", file=sys.stderr)
        return 2
    try:
        written = analyze(experiment, out, facet)
    except FacetError as exc:  # raised before anything is written
        print(f"kdsweep: error: --facet: {exc}", file=sys.stderr)
        return 2
    print(headline_table(loaded))
    print(f"wrote results.csv, tradeoffs.md, metrics_grid.png to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
