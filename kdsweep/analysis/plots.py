"""metrics_grid.png: accuracy heatmaps over T x alpha (unpruned and per p) and the two trade-off scatters.

Figures are built with the object-oriented API on an Agg canvas, never through pyplot, so saving works headless and
leaves a notebook's own backend alone.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .tables import Tables, pareto_front

DPI = 150
STYLE = {  # how each stage is drawn in the scatters; teacher and baseline stand out on purpose
    "teacher": dict(marker="*", s=320, color="#d62728", edgecolor="black", zorder=5),
    "baseline": dict(marker="X", s=170, color="#222222", edgecolor="white", zorder=5),
    "student": dict(marker="o", s=60, color="#1f77b4", edgecolor="white", zorder=4),
}
PRUNED_MARKERS = ("s", "D", "^", "v", "P", "h", "<", ">")


def metrics_grid(t: Tables) -> Figure:
    """The summary figure: heatmaps (top row), accuracy vs non-zero size and vs latency (bottom row)."""
    v = t.variants
    ok = v[v["n"] > 0] if not v.empty else v
    panels = _heat_panels(v)
    width = max(16.0, 4.2 * max(len(panels), 1) + 1.5)
    fig = Figure(figsize=(width, 13.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.2], hspace=0.04)
    _heatmaps(top, v, panels)
    ax_size, ax_lat = bottom.subplots(1, 2)
    devices = ", ".join(sorted({d for s in ok.get("latency_device", pd.Series()).dropna() for d in s.split(", ")}))
    _scatter(ax_size, ok, "size_nonzero_mb", "Non-zero parameter size (MB, log scale)", "Accuracy vs non-zero size")
    _scatter(ax_lat, ok, "latency_ms", f"Batch-1 latency, median (ms) on {devices or 'unknown device'}",
             "Accuracy vs latency")
    seeds = t.experiment.rows["seed"].dropna().nunique()
    title = f"{t.experiment.name}: {len(ok)} of {len(v)} variants ok, {seeds} seed{'s' if seeds != 1 else ''}"
    if t.missing_note:
        title += f" — {t.missing_note}"
    fig.suptitle(title, fontsize=16, fontweight="bold")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write the figure as PNG at the module's DPI (>= 150)."""
    fig.savefig(path, dpi=DPI, format="png")


def _heat_panels(v: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if v.empty:
        return []
    panels = [("KD students (unpruned)", v[v["stage"] == "student"])]
    pruned = v[v["stage"] == "pruned"]
    amounts = sorted(pruned["prune_amount"].dropna().unique())
    panels += [(f"pruned p = {p:g}", pruned[pruned["prune_amount"] == p]) for p in amounts]
    return [(title, g) for title, g in panels if not g.empty]


def _heatmaps(sub, v: pd.DataFrame, panels: list[tuple[str, pd.DataFrame]]) -> None:  # noqa: ANN001
    if not panels:
        ax = sub.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no KD or pruned students in this experiment", ha="center", va="center", fontsize=14)
        return
    grid = v[v["stage"].isin(["student", "pruned"])]
    temps = sorted(grid["temperature"].dropna().unique())
    alphas = sorted(grid["alpha"].dropna().unique())
    accs = grid.loc[grid["n"] > 0, "test_acc_mean"] * 100
    # one colour scale for all panels so the same colour means the same accuracy everywhere
    norm = Normalize(accs.min() if len(accs) else 0, accs.max() if len(accs) else 100)
    if norm.vmin == norm.vmax:
        norm = Normalize(norm.vmin - 0.5, norm.vmax + 0.5)
    axes = np.atleast_1d(sub.subplots(1, len(panels), sharey=True))
    image = None
    for ax, (title, g) in zip(axes, panels):
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
    axes[0].set_ylabel("temperature T", fontsize=11)
    cbar = sub.colorbar(image, ax=list(axes), shrink=0.9, pad=0.01)
    cbar.set_label("test accuracy (%)", fontsize=11)
    sub.suptitle("Test accuracy (%) over T × alpha" + (" (mean, ± std over seeds)" if (grid["n"] > 1).any() else ""),
                 fontsize=13)


def _scatter(ax, ok: pd.DataFrame, metric: str, xlabel: str, title: str) -> None:  # noqa: ANN001
    x_col, y_col = f"{metric}_mean", "test_acc_mean"
    ok = ok.dropna(subset=[x_col, y_col])
    if ok.empty:
        ax.axis("off")
        ax.text(0.5, 0.5, "no ok variants", ha="center", va="center", fontsize=14)
        return
    pruned = ok[ok["stage"] == "pruned"]
    amounts = sorted(pruned["prune_amount"].dropna().unique())
    colors = _pruned_colors(len(amounts))
    groups = [(stage, ok[ok["stage"] == stage], STYLE[stage], stage_label) for stage, stage_label in
              (("student", "KD student (unpruned)"),)]
    groups += [("pruned", pruned[pruned["prune_amount"] == p],
                dict(marker=PRUNED_MARKERS[k % len(PRUNED_MARKERS)], s=60, color=colors[k], edgecolor="white",
                     zorder=4), f"KD student, pruned p={p:g}") for k, p in enumerate(amounts)]
    groups += [(stage, ok[ok["stage"] == stage], STYLE[stage], stage_label) for stage, stage_label in
               (("baseline", "no-KD baseline"), ("teacher", "teacher"))]
    for _, g, style, label in groups:
        if g.empty:
            continue
        x, y = g[x_col].to_numpy(float), g[y_col].to_numpy(float) * 100
        if (g["n"] > 1).any():  # error bars only where there is a spread over seeds to show
            ax.errorbar(x, y, xerr=g[f"{metric}_std"].fillna(0).to_numpy(float),
                        yerr=g["test_acc_std"].fillna(0).to_numpy(float) * 100,
                        fmt="none", ecolor=style["color"], alpha=0.6, capsize=3, zorder=3)
        ax.scatter(x, y, label=label, linewidths=0.8, **style)
    front = pareto_front(ok, x_col)
    fx, fy = front[x_col].to_numpy(float), front[y_col].to_numpy(float) * 100
    # steps-post: each front point's accuracy holds until the next, cheaper-is-left point takes over
    ax.plot(np.append(fx, ok[x_col].max() * 1.02), np.append(fy, fy[-1]), drawstyle="steps-post", color="#555555",
            linestyle="--", linewidth=1.5, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=200, facecolors="none", edgecolors="#555555", linewidths=1.5, zorder=6)
    for r in front.itertuples():
        ax.annotate(_short(r), (getattr(r, x_col), r.test_acc_mean * 100), xytext=(7, -14),
                    textcoords="offset points", fontsize=9, color="#333333", zorder=7)
    if metric == "size_nonzero_mb" and ok[x_col].max() > 4 * ok[x_col].min():
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


def _short(r) -> str:  # noqa: ANN001
    """A compact point label for the plots: teacher, no-KD, T4 a0.9, T4 a0.9 p0.3."""
    if r.stage == "teacher":
        return "teacher"
    if r.stage == "baseline":
        return "no-KD"
    label = f"T{r.temperature:g} a{r.alpha:g}"
    return label + (f" p{r.prune_amount:g}" if r.stage == "pruned" else "")


def _pruned_colors(k: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["autumn_r"]
    return [cmap(0.35 + 0.65 * i / max(k - 1, 1)) for i in range(k)]
