"""`analyze` writes results.csv, tradeoffs.md and metrics_grid.png; `headline_table` is for a terminal."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd

from .. import storage
from .load import STAGE_ORDER, Experiment, experiment_from_rows, load_experiment, location
from .markdown import interval, num, pm, text, tradeoffs_markdown
from .noise import ties_line
from .pareto import fastest
from .plots import metrics_grid, save_figure
from .tables import KIND_NAMES, Tables, results_frame, tradeoff_tables


def analyze(experiment_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
            facet: str | None = None) -> Path | str:
    """Write results.csv, tradeoffs.md, metrics_grid.png into out_dir (default <experiment>/analysis); return it.

    Both folders may be local paths or pyarrow.fs URIs (s3://...); the return value is a Path for a local out_dir
    and the URI string otherwise. `facet` is the swept key metrics_grid.png is split by (default: the first swept
    key that varies; see `plots.metrics_grid`); an unknown key raises `FacetError` before anything is written.
    """
    tables = tradeoff_tables(load_experiment(experiment_dir))
    png = io.BytesIO()
    save_figure(metrics_grid(tables, facet), png)  # first: a bad facet must leave no half-written folder
    exp = tables.experiment
    files = {"results.csv": results_frame(exp.rows, exp.axes).to_csv(index=False).encode(),
             "tradeoffs.md": tradeoffs_markdown(tables).encode(), "metrics_grid.png": png.getvalue()}
    target = location(out_dir if out_dir is not None else storage.join(location(experiment_dir), "analysis"))
    for name, data in files.items():
        storage.write_bytes(storage.join(target, name), data)  # atomic: a reader never sees half a file
    return Path(target) if storage.is_local(target) else target


def headline_table(data: pd.DataFrame | Experiment | Tables) -> str:
    """A short fixed-width summary for a terminal: references, best of each kind, Pareto members, and any warnings.

    `data` is the raw result rows (as from `kdsweep.results.read_results` or `load_experiment(...).rows`), a loaded
    Experiment, or its Tables; only the latter two know about missing planned variants and unreadable files.
    """
    if isinstance(data, pd.DataFrame):
        data = experiment_from_rows(data)
    t = data if isinstance(data, Tables) else tradeoff_tables(data)
    v = t.variants
    if v.empty:
        return "\n".join(["(no results)", *t.notes])
    ok = v[v["n"] > 0]
    picks: dict[str, list[str]] = {}

    def pick(frame: pd.DataFrame, role: str) -> None:
        for label in frame["variant"]:
            picks.setdefault(label, []).append(role)

    pick(ok[ok["kind"] == "teacher"].head(1), "teacher")
    pick(ok[ok["kind"] == "baseline"].head(1), "no-KD baseline")
    # "best pruned" unless structured pruning is there too, then each method has its own
    unstructured = "best unstructured" if (ok["kind"] == "structured").any() else "best pruned"
    for kind, role in (("student", "best KD"), ("unstructured", unstructured), ("structured", "best structured"),
                       ("int8", "best int8")):
        s = ok[ok["kind"] == kind]
        pick(s.sort_values(["test_acc_mean", "size_nonzero_mb_mean"], ascending=[False, True]).head(1), role)
    pick(t.pareto_size, "Pareto size")
    pick(t.pareto_bytes, "Pareto file")
    pick(t.pareto_latency, "Pareto latency")
    quickest = fastest(ok)
    if len(quickest) == 1:  # several whose latencies overlap within the noise are a tie: none is named
        pick(quickest, "fastest")
    runtimes = ok["latency_runtime"].dropna().unique()
    w = max([len("variant"), *map(len, picks)])
    rw = max([len("role"), *(len(", ".join(roles)) for roles in picks.values())]) + 2
    ew = max([len("runtime"), *map(len, runtimes)]) + 2 if len(runtimes) > 1 else 0
    lines = [f"{'variant':<{w}}  {'role':<{rw}}{'n':>3}{'acc %':>15}{'95% CI':>13}{'lat ms':>9}"
             f"{'  runtime' if ew else '':<{ew}}{'nz MB':>9}{'Δacc pp':>9}"]
    for label, roles in picks.items():
        r = v[v["variant"] == label].iloc[0]
        runtime = f"  {text(r.latency_runtime)}" if ew else ""
        lines.append(f"{label:<{w}}  {', '.join(roles):<{rw}}{r.n:>3}{pm(r.test_acc_mean, r.test_acc_std, 2, 100):>15}"
                     f"{interval(r.test_acc_lo, r.test_acc_hi):>13}"
                     f"{num(r.latency_ms_mean, 3):>9}{runtime:<{ew}}{num(r.size_nonzero_mb_mean):>9}"
                     f"{num(r.get('d_test_acc_vs_teacher'), 2, 100, True):>9}")
    counts = ", ".join(f"{c} {s}" for s, c in v["status"].value_counts().items())
    lines.append(f"{len(v)} variants: {counts}; Δacc pp is versus the teacher")
    if len(runtimes):
        where = t.latency_runtimes[t.latency_runtimes["headline"]].groupby("latency_runtime", sort=False)
        shown = [f"{rt} ({', '.join(dict.fromkeys(g['latency_device']))})" for rt, g in where]
        lines.append(f"latency: batch-1 median on {', '.join(shown)}")
    if (ties := ties_line(v, KIND_NAMES)) is not None:
        lines.append(ties)
    if len(quickest) > 1:
        lines.append(f"fastest: a tie within the latency noise between {len(quickest)} variants "
                     f"({num(quickest['latency_ms_mean'].min(), 3)}–{num(quickest['latency_ms_mean'].max(), 3)} ms)")
    not_ok = v[v["status"] != "ok"]
    if len(not_ok):
        lines.append("not ok: " + "; ".join(f"{r.variant} ({r.status})" for r in not_ok.head(8).itertuples())
                     + (" …" if len(not_ok) > 8 else ""))
    return "\n".join(lines + [f"warning: {n}" for n in t.notes])


def summary_table(df: pd.DataFrame) -> str:
    """A short fixed-width table, one line per variant and seed: status, accuracy, latency per runtime, sizes."""
    if df.empty:
        return "(no results)"
    df = df.assign(_o=df["stage"].map(STAGE_ORDER),
                   _rt=df["runtime"].fillna("") + "@" + df["latency_device"].fillna(""))
    rts = [r for r in dict.fromkeys(df["_rt"]) if r != "@"]
    names = {r: r.split("@")[0].replace("onnxruntime", "ort") + ("" if r.endswith("@cpu") else "@gpu") for r in rts}

    def f(x: object, p: int) -> str:
        return "-" if pd.isna(x) else f"{x:.{p}f}"

    w = max(32, int(df["variant"].str.len().max()) + 1)
    lines = [f"{'variant':<{w}}{'seed':>5} {'status':<11}{'acc':>7}" + "".join(f"{names[r] + ' ms':>16}" for r in rts)
             + f"{'MB':>8}{'nz MB':>8}{'file MB':>8}"]
    for (_, _, _, _, _, seed, label), g in df.groupby(["_o", "temperature", "alpha", "prune_amount", "prune_method",
                                                        "seed", "variant"], dropna=False, sort=True):
        r = g.iloc[0]
        status = "ok" if (g["status"] == "ok").all() else g.loc[g["status"] != "ok", "status"].iloc[0]
        lat = dict(zip(g["_rt"], g["latency_ms"]))
        lines.append(f"{label:<{w}}{seed:>5} {status:<11}{f(r.test_acc, 4):>7}"
                     + "".join(f"{f(lat.get(x), 2):>16}" for x in rts)
                     + f"{f(r.size_mb, 2):>8}{f(r.size_nonzero_mb, 2):>8}{f(r.size_bytes / 1e6, 2):>8}")
    return "\n".join(lines)
