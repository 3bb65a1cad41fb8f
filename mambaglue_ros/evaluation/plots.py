"""PNG plots of an ``eval-homography`` result (matplotlib, Agg backend: no display needed).

    write_plots(result, folder) -> [paths]
      homography_auc_<features>.png   fraction of pairs vs mean corner error (MAGSAC and DLT), per method
      alpha_sweep_<features>.png      AUC@3px and precision vs matching time per pair, one point per alpha
      stop_layers_<features>.png      histogram of the exit layer per method
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on robots and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write (PNG, 110 dpi, parent folders created) and close ``fig``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def _errors(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.inf if r[key] is None else r[key] for r in rows], dtype=np.float64)


def plot_auc(result: dict[str, Any], path: Path, max_px: float = 10.0) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "error_magsac", "MAGSAC"), (axes[1], "error_dlt", "DLT (all matches)")):
        for m, rows in result["per_pair"].items():
            e = np.sort(_errors(rows, key))
            x = np.linspace(0, max_px, 200)
            y = np.searchsorted(e, x, side="right") / max(len(e), 1)
            s = result["methods"][m]
            prefix = "auc" if key == "error_magsac" else "auc_dlt"
            ax.plot(x, y, label=f"{m} (AUC@3px {s[f'{prefix}@3px']:.3f})")
        ax.set_title(f"homography, {title}")
        ax.set_xlabel("mean corner error [px]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("fraction of pairs")
    fig.suptitle(f"{result['features']}, {result['pairs']} pairs")
    return save_figure(fig, path)


def plot_alpha_sweep(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m, rows in result["alpha_sweep"].items():
        t = [r.get("median_ms_per_pair", r["ms_per_pair"]) for r in rows]
        for ax, key in ((axes[0], "auc@3px"), (axes[1], "precision")):
            ax.plot(t, [r[key] for r in rows], "o-", label=m)
            for r, x in zip(rows, t):
                ax.annotate("off" if r["alpha"] is None else f"{r['alpha']:g}", (x, r[key]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    for ax, label in ((axes[0], "homography AUC@3px (MAGSAC)"), (axes[1], "precision (< 3 px)")):
        ax.set_xlabel("matching time per pair, median [ms]")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"early-exit threshold alpha: accuracy vs time ({result['features']}, {result['pairs']} pairs)")
    return save_figure(fig, path)


def plot_stop_layers(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    methods = list(result["per_pair"])
    n_layers = int(next(iter(result["methods"].values()))["num_layers"])
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.arange(0.5, n_layers + 1.5)
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        stops = [r["stop_layer"] for r in result["per_pair"][m]]
        counts, _ = np.histogram(stops, bins=bins)
        ax.bar(np.arange(1, n_layers + 1) - 0.4 + width * (i + 0.5), counts, width=width, label=m)
    ax.set_xlabel("exit layer")
    ax.set_ylabel("pairs")
    ax.set_xticks(range(1, n_layers + 1))
    ax.legend(fontsize=8)
    ax.set_title(f"adaptive depth ({result['features']}, default alpha)")
    return save_figure(fig, path)


def write_plots(result: dict[str, Any], folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = result["features"]
    paths = [plot_auc(result, folder / f"homography_auc_{f}.png"),
             plot_stop_layers(result, folder / f"stop_layers_{f}.png")]
    if result.get("alpha_sweep"):
        paths.append(plot_alpha_sweep(result, folder / f"alpha_sweep_{f}.png"))
    return paths
