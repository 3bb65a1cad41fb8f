"""The replay report: a printed table and PNG plots (matplotlib, Agg backend, no display).

Plots (one file each, every method of a comparison in the same axes):
  trajectory.png  top view of the ground truth and the aligned estimates (the world plane
                  orthogonal to the first camera's y axis; camera x/z when there is no ground truth)
  rpe.png         RPE translation (m) and rotation (deg) per frame pair
  matches.png     temporal matches and pose inliers per frame
  latency.png     histogram of the node's per-frame latency
  rate.png        frames published vs processed over wall time (input vs processed rate)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.plots import pyplot, save_figure
from .metrics import Trajectory

NS = 1_000_000_000
COLUMNS = (  # (header, report key, format, scale)
    ("frames in", "frames_in", "{:d}", None),
    ("proc", "frames_processed", "{:d}", None),
    ("drop", "frames_dropped", "{:d}", None),
    ("poses", "poses", "{:d}", None),
    ("ATE m", "ate_m", "{:.4f}", None),
    ("RPE m/fr", "rpe_trans_m", "{:.4f}", None),
    ("RPE deg/fr", "rpe_rot_deg", "{:.3f}", None),
    ("RPE %/m", "rpe_trans_per_m", "{:.2f}", 100.0),
    ("deg/m", "rpe_rot_deg_per_m", "{:.3f}", None),
    ("drift %", "drift_pct", "{:.2f}", None),
    ("deg/100m", "drift_deg_per_100m", "{:.2f}", None),
    ("step ratio", "step_ratio_median", "{:.3f}", None),
    ("matches", "mean_matches", "{:.0f}", None),
    ("inl.ratio", "mean_inlier_ratio", "{:.3f}", None),
    ("lat p50 ms", "latency_ms_p50", "{:.0f}", None),
    ("p95 ms", "latency_ms_p95", "{:.0f}", None),
)


def _cell(value: Any, fmt: str, scale: float | None) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if scale is not None:
        value = value * scale
    return fmt.format(int(value) if fmt == "{:d}" else float(value))


def format_table(reports: dict[str, dict[str, Any]]) -> str:
    """One row per method. ATE after se3 (stereo) / sim3 (mono) alignment; RPE per frame pair
    and per metre of ground-truth path (% and deg/m over ~1 m segments); KITTI-style drift (% and
    deg/100 m over 100..800 m segments, 10..50 m on short clips; metric runs only); median step
    length ratio estimate/truth; latency = node tracker time per frame."""
    headers = ["method"] + [c[0] for c in COLUMNS]
    rows = [[name] + [_cell(r.get(key), fmt, scale) for _, key, fmt, scale in COLUMNS] for name, r in reports.items()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    first = next(iter(reports.values()))
    title = (f"{first.get('bag')}: {first.get('mode')} {first.get('features')} {first.get('pacing')}, "
             f"alignment {first.get('alignment') or '-'}, GT path {_cell(first.get('gt_path_m'), '{:.2f}', None)} m")
    sep = "-" * len(line(headers))
    return "\n".join([title, line(headers), sep] + [line(r) for r in rows])


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _top_view_axes(first_camera_pose: np.ndarray) -> tuple[int, int]:
    """The two world axes of a top view: drop the world axis closest to the first camera's
    y axis (optical frame: y points down, so this is the vertical for any roughly upright camera:
    z in z-up worlds, y in KITTI's camera-0 world)."""
    vertical = int(np.argmax(np.abs(first_camera_pose[:3, 1])))
    a, b = (k for k in range(3) if k != vertical)
    return a, b


def plot_trajectory(path: Path, series: list[dict[str, Any]], gt: Trajectory | None) -> None:
    """Top view (left) and the vertical coordinate over time (right), ground truth and aligned
    estimates."""
    plt = pyplot()
    fig, (ax, axv) = plt.subplots(1, 2, figsize=(11, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    names = "xyz"
    with_gt = gt is not None and any(s["evaluation"] and s["evaluation"]["aligned"] is not None for s in series)
    if with_gt:
        stamps = np.concatenate([s["camera_trajectory"].stamps_ns for s in series if len(s["camera_trajectory"])])
        keep = (gt.stamps_ns >= stamps.min() - NS // 2) & (gt.stamps_ns <= stamps.max() + NS // 2)
        if not keep.any():
            keep[:] = True
        g, tg = gt.positions[keep], gt.stamps_ns[keep]
        t0 = int(tg[0])
        a, b = _top_view_axes(gt.poses[np.argmax(keep)])
        v = 3 - a - b
        ax.plot(g[:, a], g[:, b], "k-", lw=2.5, alpha=0.35, label="ground truth")
        ax.plot(g[:1, a], g[:1, b], "ko", ms=6)
        axv.plot((tg - t0) / NS, g[:, v], "k-", lw=2.5, alpha=0.35)
        for s in series:
            ev = s["evaluation"]
            if ev and ev["aligned"] is not None:
                p = ev["aligned"].positions
                ate = ev["summary"]["ate_m"]
                ax.plot(p[:, a], p[:, b], "-", lw=1.3, marker=".", ms=3,
                        label=f"{s['name']} (ATE {ate:.3f} m, {ev['summary']['alignment']})")
                axv.plot((ev["aligned"].stamps_ns - t0) / NS, p[:, v], "-", lw=1.3, marker=".", ms=3)
        ax.set_xlabel(f"{names[a]} [m] (ground-truth world)")
        ax.set_ylabel(f"{names[b]} [m]")
        axv.set_ylabel(f"{names[v]} [m] (vertical)")
    else:
        for s in series:
            tr = s["camera_trajectory"]
            p = tr.positions
            ax.plot(p[:, 0], p[:, 2], ".-", label=s["name"])
            if len(tr):
                axv.plot((tr.stamps_ns - tr.stamps_ns[0]) / NS, p[:, 1], ".-")
        ax.set_xlabel("x [first camera frame]")
        ax.set_ylabel("z (forward)")
        axv.set_ylabel("y (down) [first camera frame]")
    ax.set_aspect("equal", adjustable="datalim")
    axv.set_xlabel("time [s]")
    for axis in (ax, axv):
        axis.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("trajectory, top view")
    axv.set_title("vertical")
    save_figure(fig, path)


def plot_rpe(path: Path, series: list[dict[str, Any]]) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for s in series:
        ev = s["evaluation"]
        if not ev or ev["aligned"] is None:
            continue
        r = ev["rpe_frame"]
        stamps = ev["gt_assoc"].stamps_ns
        t0 = stamps[0]
        x = np.array([(stamps[j] - t0) / NS for _, j in r["pairs"]])
        ax1.plot(x, r["trans_errors"], ".-", ms=3, label=f"{s['name']} (RMSE {r['trans']['rmse']:.4f} m)")
        ax2.plot(x, r["rot_errors"], ".-", ms=3, label=f"{s['name']} (RMSE {r['rot']['rmse']:.3f} deg)")
    ax1.set_ylabel("translation [m]")
    ax2.set_ylabel("rotation [deg]")
    ax2.set_xlabel("time [s]")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_title("relative pose error per frame pair")
    save_figure(fig, path)


def plot_matches(path: Path, series: list[dict[str, Any]]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for k, s in enumerate(series):
        color = f"C{k}"
        idx = [r["index"] for r in s["frames"] if r["matches"] is not None]
        ax.plot(idx, [r["matches"] for r in s["frames"] if r["matches"] is not None], "-", color=color,
                label=f"{s['name']} matches")
        ax.plot(idx, [r["inliers"] if r["pose"] else 0 for r in s["frames"] if r["matches"] is not None], "--",
                color=color, label=f"{s['name']} inliers")
    ax.set_xlabel("frame")
    ax.set_ylabel("count")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.set_title("temporal matches and pose inliers per frame")
    save_figure(fig, path)


def plot_latency(path: Path, series: list[dict[str, Any]]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    values = {s["name"]: [r["latency_ms"] for r in s["frames"] if r["latency_ms"] is not None] for s in series}
    everything = [v for vs in values.values() for v in vs]
    if everything:
        bins = np.linspace(0, max(everything) * 1.05, 30)
        for name, vs in values.items():
            if vs:
                ax.hist(vs, bins=bins, alpha=0.5,
                        label=f"{name}: p50 {np.percentile(vs, 50):.0f} ms, p95 {np.percentile(vs, 95):.0f} ms")
    ax.set_xlabel("node latency per frame [ms] (extract + match + pose)")
    ax.set_ylabel("frames")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_rate(path: Path, series: list[dict[str, Any]]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, s in enumerate(series):
        pubs = sorted(r["t_pub"] for r in s["frames"] if r["t_pub"] is not None)
        done = sorted(r["t_end"] for r in s["frames"] if r["processed"] and r["t_end"] is not None)
        if not pubs:
            continue
        t0 = pubs[0]
        rep = s["report"]
        ax.step(np.array(pubs) - t0, np.arange(1, len(pubs) + 1), where="post", color=f"C{k}", alpha=0.5,
                label=f"{s['name']} in ({_hz(rep.get('input_rate_hz'))})")
        ax.step(np.array(done) - t0, np.arange(1, len(done) + 1), where="post", color=f"C{k}", ls="--",
                label=f"{s['name']} processed ({_hz(rep.get('processed_rate_hz'))})")
    ax.set_xlabel("wall time [s]")
    ax.set_ylabel("frames (cumulative)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("input vs processed frames")
    save_figure(fig, path)


def _hz(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} Hz"


def write_plots(out: str | Path, series: list[dict[str, Any]], gt: Trajectory | None) -> list[str]:
    """All plots into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in (("trajectory.png", lambda p: plot_trajectory(p, series, gt)),
                     ("rpe.png", lambda p: plot_rpe(p, series)),
                     ("matches.png", lambda p: plot_matches(p, series)),
                     ("latency.png", lambda p: plot_latency(p, series)),
                     ("rate.png", lambda p: plot_rate(p, series))):
        fn(out / name)
        paths.append(str(out / name))
    return paths
