"""metrics_grid.png: accuracy heatmaps over T x alpha (per kind and p), the trade-off scatters, latency by runtime.

Facets: when a swept key (the config's `sweep:`) varies, the figure is split by one of them, `facet` (default: the
first swept key that varies): the trade-off scatters get one row of panels per value, in which the variants that do
not depend on the key (the teacher, for `student.arch`) appear in every row as references; the latency panel groups
each kind by value. The heatmaps get one row of panels per combination of every varying swept key (facet first), since
two variants in one T x alpha cell cannot share it. Without varying swept keys the figure is as it always was.

Figures are built with the object-oriented API on an Agg canvas, never through pyplot, so saving works headless and
leaves a notebook's own backend alone.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..errors import FacetError
from ..names import STRUCTURED
from .load import axis_columns, axis_order
from .markdown import cell
from .pareto import PARETO_AXES, pareto_front
from .tables import KIND_NAMES, KINDS, Tables

DPI = 150
HEAT_COLUMNS = 5  # heatmap panels per row: a sweep with many p values and INT8 variants wraps instead of widening
STYLE = {  # how each stage is drawn in the scatters; teacher and baseline stand out on purpose
    "teacher": dict(marker="*", s=320, color="#d62728", edgecolor="black", zorder=5),
    "baseline": dict(marker="X", s=170, color="#222222", edgecolor="white", zorder=5),
    "student": dict(marker="o", s=60, color="#1f77b4", edgecolor="white", zorder=4),
    "int8": dict(marker="d", s=80, color="#9467bd", edgecolor="white", zorder=4),
}
PRUNED_MARKERS = ("s", "D", "^", "v", "P", "h", "<", ">")
# colour maps of the pruned points by p: warm for unstructured (masks), cool for structured (channels removed)
PRUNED_CMAPS = {"unstructured": "autumn_r", "structured": "winter_r"}
RUNTIME_COLORS = {"onnxruntime-cuda": "#2ca02c", "onnxruntime-cpu": "#1f77b4", "torch-cuda": "#d62728",
                  "torch-cpu": "#ff7f0e", "tensorrt": "#9467bd"}


def facet_axis(t: Tables, facet: str | None = None) -> str | None:
    """The swept key metrics_grid facets by: `facet` (any swept key of the experiment), else the first swept key
    that varies, else None (no facet)."""
    if facet is None:
        return t.axes[0] if t.axes else None
    known = t.experiment.axes or axis_columns(t.variants)
    if facet not in known:
        have = ", ".join(known) if known else "none (the experiment has no sweep: section)"
        raise FacetError(f"unknown key {facet!r}; swept keys of this experiment: {have}")
    return facet


def facet_values(v: pd.DataFrame, key: str | None) -> list:
    """The values of `key` among the variants, in order (numbers ascending, then text); [None] without a key."""
    if key is None or key not in v or v[key].isna().all():
        return [None]
    return list(axis_order(v[key]))


def metrics_grid(t: Tables, facet: str | None = None) -> Figure:
    """The summary figure: heatmaps (top), accuracy vs non-zero size and vs latency, latency by runtime (bottom).

    `facet`: the swept key to split the figure by (see the module docstring); default the first swept key that
    varies, none when no swept key varies. An unknown key raises FacetError before anything is drawn.
    """
    key = facet_axis(t, facet)
    v = t.variants
    ok = v[v["n"] > 0] if not v.empty else v
    values = facet_values(v, key)
    split = [key, *(a for a in t.axes if a != key)] if key else []
    panels, cols = _heat_panels(v, split)
    heat_rows = max(1, -(-len(panels) // cols))
    width = max(16.0, 4.2 * max(cols, 1) + 1.5)
    extra = 6.0 * (len(values) - 1)  # each further facet value adds a row of scatters
    fig = Figure(figsize=(width, 13.5 + 5.0 * heat_rows + extra), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[heat_rows, 1.2 * len(values), 0.9], hspace=0.04)
    _heatmaps(top, panels, cols)
    headline = t.latency_runtimes[t.latency_runtimes["headline"]]
    runtimes = ", ".join(f"{rt} on {', '.join(dict.fromkeys(g['latency_device']))}"
                         for rt, g in headline.groupby("latency_runtime", sort=False))
    # one x scale per column, decided on every ok variant, so the facet rows read against each other
    log_size = not ok.empty and ok["size_nonzero_mb_mean"].max() > 4 * ok["size_nonzero_mb_mean"].min()
    grid = middle.subplots(len(values), 2, squeeze=False, **({"sharex": "col", "sharey": True} if key else {}))
    for (ax_size, ax_lat), value in zip(grid, values):
        # the variants that do not depend on the key (NaN) are the same for every value: references in each row
        part = ok if key is None else ok[(ok[key] == value).fillna(False).astype(bool) | ok[key].isna()]
        prefix = "" if key is None else f"{key} = {cell(value)}\n"
        _scatter(ax_size, part, "size_nonzero_mb", "Non-zero parameter size (MB, log scale)",
                 prefix + "Accuracy vs non-zero size", log_x=log_size if key else None, label_axes=split[1:])
        _scatter(ax_lat, part, "latency_ms", f"Batch-1 latency, median (ms): {runtimes or 'no runtime'}",
                 prefix + "Accuracy vs latency", label_axes=split[1:])
    _runtime_panel(bottom.subplots(), t, key)
    seeds = t.experiment.rows["seed"].dropna().nunique()
    title = f"{t.experiment.name}: {len(ok)} of {len(v)} variants ok, {seeds} seed{'s' if seeds != 1 else ''}"
    if t.missing_note:
        title += f" — {t.missing_note}"
    fig.suptitle(title, fontsize=16, fontweight="bold")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write the figure as PNG at the module's DPI (>= 150)."""
    fig.savefig(path, dpi=DPI, format="png")


def _heat_panels(v: pd.DataFrame, split: list[str] | None = None) -> tuple[list, int]:
    """(panels, columns): one T x alpha panel per kind of student (unpruned, each (method, p), the INT8 ones of each).

    With `split` (swept keys), one group of panels per combination of their values, each group starting a new row;
    the list is padded with None to the row ends.
    """
    if v.empty:
        return [], 1
    grid = v[v["temperature"].notna() & v["alpha"].notna()]
    if not split:
        panels = _kind_panels(grid)
        return panels, max(1, min(len(panels), HEAT_COLUMNS))
    ranks = [axis_order(grid[a]) for a in split]
    combos = sorted(grid[split].drop_duplicates().itertuples(index=False, name=None),
                    key=lambda c: [-1 if pd.isna(x) else r[x] for x, r in zip(c, ranks)])
    groups = []
    for combo in combos:
        mask = np.ones(len(grid), dtype=bool)
        for a, x in zip(split, combo):
            mask &= grid[a].isna().to_numpy() if pd.isna(x) else (grid[a] == x).fillna(False).to_numpy(bool)
        # one line per key: several `key = value` pairs on one line run into the neighbouring panels' titles
        prefix = "\n".join(f"{a} = {cell(x)}" for a, x in zip(split, combo) if not pd.isna(x))
        groups.append([(f"{prefix}\n{title}" if prefix else title, g) for title, g in _kind_panels(grid[mask])])
    groups = [g for g in groups if g]
    cols = max(1, min(max((len(g) for g in groups), default=1), HEAT_COLUMNS))
    return [p for g in groups for p in g + [None] * (-len(g) % cols)], cols


def _kind_panels(grid: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    panels = []
    for int8 in (False, True):
        part = grid[(grid["kind"] == "int8") == int8]
        dense = part[part["prune_amount"].isna()]
        panels.append((("INT8 " if int8 else "") + "KD students (unpruned)", dense))
        pruned = part[part["prune_amount"].notna()]
        structured = pruned["prune_method"] == STRUCTURED
        for p in sorted(pruned["prune_amount"].unique()):
            at_p = pruned["prune_amount"] == p
            panels.append((("INT8 " if int8 else "") + f"pruned p = {p:g}", pruned[at_p & ~structured]))
            panels.append((("INT8 " if int8 else "") + f"pruned p = {p:g} structured", pruned[at_p & structured]))
    return [(title, g) for title, g in panels if not g.empty]


def _heatmaps(sub, panels: list, cols: int) -> None:  # panels: (title, rows) or None (blank)
    if not panels:
        ax = sub.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no KD or pruned students in this experiment", ha="center", va="center", fontsize=14)
        return
    grid = pd.concat([p[1] for p in panels if p is not None])
    temps = sorted(grid["temperature"].dropna().unique())
    alphas = sorted(grid["alpha"].dropna().unique())
    accs = grid.loc[grid["n"] > 0, "test_acc_mean"] * 100
    # one colour scale for all panels so the same colour means the same accuracy everywhere
    norm = Normalize(accs.min() if len(accs) else 0, accs.max() if len(accs) else 100)
    if norm.vmin == norm.vmax:
        norm = Normalize(norm.vmin - 0.5, norm.vmax + 0.5)
    rows = -(-len(panels) // cols)
    axes = np.atleast_1d(sub.subplots(rows, cols, sharey=True, squeeze=False).ravel())
    drawn = [ax for ax, p in zip(axes, panels) if p is not None]
    for ax in [ax for ax, p in zip(axes, [*panels, *[None] * len(axes)]) if p is None]:
        ax.axis("off")
    image = None
    for ax, (title, g) in zip(drawn, [p for p in panels if p is not None]):
        values = np.full((len(temps), len(alphas)), np.nan)
        labels = [["—"] * len(alphas) for _ in temps]
        for r in g.itertuples():
            i, j = temps.index(r.temperature), alphas.index(r.alpha)
            if r.n > 0:
                values[i, j] = r.test_acc_mean * 100
                labels[i][j] = f"{values[i, j]:.1f}" + (f"\n±{r.test_acc_std * 100:.1f}" if r.n > 1 else "")
            else:
                labels[i][j] = r.status.split(" ")[0]
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", norm=norm, aspect="auto")
        ax.set_facecolor("#dddddd")  # failed / missing cells show as grey
        for i in range(len(temps)):
            for j in range(len(alphas)):
                dark = np.isnan(values[i, j]) or norm(values[i, j]) > 0.6
                ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=11,
                        color="black" if dark else "white", fontweight="bold")
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas], fontsize=11)
        ax.set_yticks(range(len(temps)), [f"{x:g}" for x in temps], fontsize=11)
        ax.set_xlabel("alpha (weight of the KD loss)", fontsize=11)
        ax.set_title(title, fontsize=13)
    for ax in axes[::cols]:
        ax.set_ylabel("temperature T", fontsize=11)
    cbar = sub.colorbar(image, ax=drawn, shrink=0.9, pad=0.01)
    cbar.set_label("test accuracy (%)", fontsize=11)
    sub.suptitle("Test accuracy (%) over T × alpha" + (" (mean, ± std over seeds)" if (grid["n"] > 1).any() else ""),
                 fontsize=13)


def _scatter(ax, ok: pd.DataFrame, metric: str, xlabel: str, title: str,
             log_x: bool | None = None, label_axes: Sequence[str] = ()) -> None:
    """Accuracy against one cost with its Pareto front; `log_x` None: log scale when the costs span over 4x;
    `label_axes`: swept keys whose values the front's point labels show (those that vary within the panel)."""
    x_col, y_col = f"{metric}_mean", "test_acc_mean"
    ok = ok.dropna(subset=[x_col, y_col])
    if ok.empty:
        ax.axis("off")
        ax.text(0.5, 0.5, "no ok variants", ha="center", va="center", fontsize=14)
        return
    groups = [("KD student (unpruned)", ok[ok["kind"] == "student"], STYLE["student"])]
    for kind, method in (("unstructured", "pruned"), ("structured", "structured")):
        pruned = ok[ok["kind"] == kind]
        amounts = sorted(pruned["prune_amount"].dropna().unique())
        colors = _pruned_colors(len(amounts), PRUNED_CMAPS[kind])
        groups += [(f"KD student, {method} p={p:g}", pruned[pruned["prune_amount"] == p],
                    dict(marker=PRUNED_MARKERS[k % len(PRUNED_MARKERS)], s=60, color=colors[k], edgecolor="white",
                         zorder=4)) for k, p in enumerate(amounts)]
    groups += [("INT8 (ONNX Runtime)", ok[ok["kind"] == "int8"], STYLE["int8"]),
               ("no-KD baseline", ok[ok["kind"] == "baseline"], STYLE["baseline"]),
               ("teacher", ok[ok["kind"] == "teacher"], STYLE["teacher"])]
    for label, g, style in groups:
        if g.empty:
            continue
        x, y = g[x_col].to_numpy(float), g[y_col].to_numpy(float) * 100
        if (g["n"] > 1).any():  # error bars only where there is a spread over seeds to show
            ax.errorbar(x, y, xerr=g[f"{metric}_std"].fillna(0).to_numpy(float),
                        yerr=g["test_acc_std"].fillna(0).to_numpy(float) * 100,
                        fmt="none", ecolor=style["color"], alpha=0.6, capsize=3, zorder=3)
        ax.scatter(x, y, label=label, linewidths=0.8, **style)
    spread = dict(PARETO_AXES.values()).get(x_col)
    front = pareto_front(ok, x_col, spread=spread)
    fx, fy = front[x_col].to_numpy(float), front[y_col].to_numpy(float) * 100
    # steps-post: each front point's accuracy holds until the next, cheaper-is-left point takes over
    ax.plot(np.append(fx, ok[x_col].max() * 1.02), np.append(fy, fy[-1]), drawstyle="steps-post", color="#555555",
            linestyle="--", linewidth=1.5, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=200, facecolors="none", edgecolors="#555555", linewidths=1.5, zorder=6)
    for _, r in front.iterrows():
        ax.annotate(_short(r, label_axes), (r[x_col], r.test_acc_mean * 100), xytext=(7, -14),
                    textcoords="offset points", fontsize=9, color="#333333", zorder=7)
    wide = ok[x_col].max() > 4 * ok[x_col].min() if log_x is None else log_x
    if metric == "size_nonzero_mb" and wide:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        xlabel = xlabel.replace(", log scale", "")
    ax.set_xlabel(xlabel, fontsize=12)
    ax.set_ylabel("test accuracy (%)", fontsize=12)
    ax.set_title(title + " (Pareto front: higher and further left is better)", fontsize=13)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=11)
    ax.legend(fontsize=10, loc="best", framealpha=0.9)


def _runtime_panel(ax, t: Tables, key: str | None = None) -> None:
    """Latency of every variant on every runtime, grouped by kind (and by the facet key's value within a kind): one
    colour per runtime, a bar at each group's median."""
    lat = t.latency_runtimes
    if lat.empty:
        ax.axis("off")
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center", fontsize=14)
        return
    value = (lat["variant"].map(dict(zip(t.variants["variant"], t.variants[key]))) if key in t.variants
             else pd.Series(np.nan, index=lat.index, dtype=object))
    groups = []  # (tick label, mask of lat)
    for kind in [k for k in KINDS if (lat["kind"] == k).any()]:
        of_kind = (lat["kind"] == kind).to_numpy()
        if value[of_kind].notna().any():  # this kind depends on the key: one group per value
            groups += [(f"{KIND_NAMES[kind]}\n{cell(x)}", of_kind & (value == x).fillna(False).to_numpy(bool))
                       for x in axis_order(value[of_kind])]
        lacking = of_kind & value.isna().to_numpy()
        if lacking.any():
            groups.append((KIND_NAMES[kind], lacking))
    runtimes = list(t.latency_by_runtime.columns)
    width = 0.8 / len(runtimes)
    rng = np.random.default_rng(0)  # a fixed horizontal jitter so identical latencies stay visible
    for j, rt in enumerate(runtimes):
        color = RUNTIME_COLORS.get(rt, f"C{j}")
        of_rt = lat[lat["latency_runtime"] == rt]
        label = f"{rt} ({', '.join(of_rt['latency_device'].unique())})"
        for i, (_, mask) in enumerate(groups):
            g = of_rt[mask[of_rt.index.to_numpy()]]
            if g.empty:
                continue
            x0 = i - 0.4 + width * (j + 0.5)
            xs = x0 + rng.uniform(-0.3, 0.3, len(g)) * width
            ax.errorbar(xs, g["latency_ms_mean"], yerr=g["latency_spread_ms"].fillna(0), fmt="o", color=color,
                        markersize=5, alpha=0.8, capsize=2, label=label)
            label = None  # one legend entry per runtime
            ax.hlines(g["latency_ms_mean"].median(), x0 - width * 0.45, x0 + width * 0.45, color=color, linewidth=3)
    ax.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=11)
    if key is not None:
        ax.set_xlabel(f"kind of variant, and {key}", fontsize=11)
    values = lat["latency_ms_mean"]
    if values.max() > 4 * values.min():
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("batch-1 latency, median (ms)", fontsize=12)
    ax.set_title("Latency by runtime (dots: variants ± noise; bar: median of the kind)", fontsize=13)
    ax.grid(True, axis="y", alpha=0.3)
    ax.tick_params(labelsize=11)
    ax.legend(fontsize=10, loc="best", framealpha=0.9)


def _short(r, axes: Sequence[str] = ()) -> str:  # r: a row of the variant table
    """A compact point label for the plots: teacher, no-KD, T4 a0.9, T4 a0.9 p0.3, T4 a0.9 p0.3s, ... int8; then
    `name=value` of each swept key in `axes` that the variant has (`epochs=3` for teacher.epochs)."""
    if r.stage == "teacher" or (r.kind == "int8" and r.variant.startswith("teacher")):
        label = "teacher"
    elif r.stage == "baseline" or (r.kind == "int8" and pd.isna(r.temperature)):
        label = "no-KD"
    else:
        label = f"T{r.temperature:g} a{r.alpha:g}"
        if pd.notna(r.prune_amount):
            label += f" p{r.prune_amount:g}" + ("s" if r.prune_method == STRUCTURED else "")
    label += " int8" if r.kind == "int8" else ""
    return "".join([label, *(f" {a.rsplit('.', 1)[-1]}={cell(r[a])}" for a in axes if a in r and pd.notna(r[a]))])


def _pruned_colors(k: int, name: str) -> list:
    from matplotlib import colormaps

    cmap = colormaps[name]
    return [cmap(0.35 + 0.65 * i / max(k - 1, 1)) for i in range(k)]
