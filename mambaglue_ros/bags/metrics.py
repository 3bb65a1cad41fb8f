"""Trajectory metrics in plain numpy: association, Umeyama alignment, ATE, RPE, TUM files.

Conventions (as in the rest of the package):
* A pose is a (4, 4) homogeneous ``T_world_x`` mapping points from frame x to the world frame;
  a trajectory is ``Trajectory(stamps_ns (N,) int64, poses (N, 4, 4) float64)``.
* Ground truth and estimate are compared as **camera (optical frame) trajectories**. The node's
  ``~/odom`` is ``T_odom_base``; :func:`odom_to_camera` turns it into ``T_cam0_cam`` (the pose of
  the camera in the first camera's frame) with the node's ``camera_to_base`` (``T_base_cam``), so
  the estimate and the ground truth describe the same rigid body. Its world frame (the first
  camera) differs from the ground truth's by an unknown transform, which the alignment finds.
* Alignment (Umeyama 1991): ``se3`` (rotation + translation) for metric estimates (stereo),
  ``sim3`` (plus one global scale) for monocular estimates, whose scale is unknown.
* ATE: RMSE of the translation differences after alignment (metres).
* RPE: for pose pairs (i, j), ``E = inv(inv(G_i) G_j) @ (inv(P_i) P_j)``; translation error is
  ``|t(E)|`` (metres, in the estimate's aligned scale), rotation error is the angle of ``R(E)``
  (degrees). ``delta_unit="frames"``: j = i + delta (consecutive associated poses for delta=1);
  ``delta_unit="m"``: j is the first pose at least ``delta`` metres of ground-truth path after i,
  and the errors are also given divided by that path length (per metre, KITTI style).

* Drift (KITTI devkit): translation % and rotation deg/100 m over segments of fixed path length
  (100..800 m, or 10..50 m for short clips), see :func:`drift`.

ATE and RPE have the same definitions as evo's ``evo_ape`` / ``evo_rpe`` (translation part,
``--align`` / ``--correct_scale``); ``test/test_metrics_evo.py`` checks them against evo on the
same TUM files.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

NS = 1_000_000_000


@dataclass
class Trajectory:
    """Stamped poses: ``stamps_ns`` (N,) int64 and ``poses`` (N, 4, 4) float64, ``T_world_x``."""

    stamps_ns: np.ndarray
    poses: np.ndarray

    def __post_init__(self) -> None:
        self.stamps_ns = np.asarray(self.stamps_ns, dtype=np.int64).reshape(-1)
        self.poses = np.asarray(self.poses, dtype=np.float64).reshape(-1, 4, 4)
        if len(self.stamps_ns) != len(self.poses):
            raise ValueError(f"{len(self.stamps_ns)} stamps but {len(self.poses)} poses")

    def __len__(self) -> int:
        return len(self.stamps_ns)

    @property
    def positions(self) -> np.ndarray:
        """(N, 3) translations."""
        return self.poses[:, :3, 3]

    def subset(self, idx: np.ndarray) -> "Trajectory":
        return Trajectory(self.stamps_ns[idx], self.poses[idx])


# --------------------------------------------------------------------------------------------
# Small SO(3)/SE(3) helpers (numpy only)
# --------------------------------------------------------------------------------------------
def quat_to_rot(q: np.ndarray) -> np.ndarray:
    """(x, y, z, w) -> (3, 3) rotation (normalised first)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rot_to_quat(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> unit quaternion (x, y, z, w) with w >= 0."""
    from ..geometry import matrix_to_quaternion

    return matrix_to_quaternion(R)


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a rotation matrix in degrees (robust near 0 and 180)."""
    c = (np.trace(R) - 1.0) / 2.0
    s = np.linalg.norm([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / 2.0
    return float(np.degrees(np.arctan2(s, c)))


def inv_se3(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform (or a stack (N, 4, 4))."""
    T = np.asarray(T, dtype=np.float64)
    R = np.swapaxes(T[..., :3, :3], -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = R
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", R, T[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def make_pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


# --------------------------------------------------------------------------------------------
# TUM files
# --------------------------------------------------------------------------------------------
def read_tum(path: str | Path) -> Trajectory:
    """TUM trajectory file (``timestamp_s tx ty tz qx qy qz qw``, ``#`` comments) -> Trajectory."""
    stamps, poses = [], []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        values = line.replace(",", " ").split()
        if len(values) != 8:
            raise ValueError(f"{path}:{line_no}: a TUM row has 8 numbers, got {len(values)}")
        # the stamp as a decimal string -> exact integer nanoseconds (no float round-off)
        stamps.append(int((Decimal(values[0]) * NS).to_integral_value()))
        v = [float(x) for x in values[1:]]
        poses.append(make_pose(quat_to_rot(np.array(v[3:7])), np.array(v[:3])))
    return Trajectory(np.array(stamps, dtype=np.int64), np.array(poses).reshape(-1, 4, 4))


def write_tum(path: str | Path, traj: Trajectory, header: str = "timestamp(s) tx ty tz qx qy qz qw") -> None:
    """Trajectory -> TUM file (stamps with 9 decimals, i.e. exact nanoseconds)."""
    lines = [f"# {header}"] if header else []
    for stamp, T in zip(traj.stamps_ns, traj.poses):
        sec, nsec = divmod(int(stamp), NS)
        q = rot_to_quat(T[:3, :3])
        t = T[:3, 3]
        lines.append(f"{sec}.{nsec:09d} {t[0]:.9f} {t[1]:.9f} {t[2]:.9f} "
                     f"{q[0]:.9f} {q[1]:.9f} {q[2]:.9f} {q[3]:.9f}")
    Path(path).write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# Association and alignment
# --------------------------------------------------------------------------------------------
def associate(stamps_a: np.ndarray, stamps_b: np.ndarray, max_diff_ns: int = 10_000_000
              ) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one nearest-stamp association (TUM ``associate.py``): candidate pairs within
    ``max_diff_ns`` are taken greedily by increasing time difference. Returns index arrays
    (idx_a, idx_b) sorted by ``stamps_a``."""
    a = np.asarray(stamps_a, dtype=np.int64)
    b = np.asarray(stamps_b, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order_b = np.argsort(b, kind="stable")
    sb = b[order_b]
    cand = []
    # for each a, the b's within the window form a contiguous block of the sorted b's
    lo = np.searchsorted(sb, a - max_diff_ns, side="left")
    hi = np.searchsorted(sb, a + max_diff_ns, side="right")
    for i in range(len(a)):
        for k in range(lo[i], hi[i]):
            cand.append((abs(int(a[i]) - int(sb[k])), i, int(order_b[k])))
    cand.sort()
    used_a, used_b, pairs = set(), set(), []
    for _, i, j in cand:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    pairs.sort()
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ia, ib = zip(*pairs)
    return np.array(ia, dtype=np.int64), np.array(ib, dtype=np.int64)


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991) for (N, 3) point sets.

    Returns (R (3, 3), t (3,), s). ``with_scale=False`` fixes s = 1 (SE(3)). Needs N >= 3
    non-collinear points for a unique rotation (with fewer, a valid but arbitrary one is
    returned); raises ValueError for N < 2 with scale or N < 1.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if len(src) != len(dst):
        raise ValueError(f"{len(src)} source points but {len(dst)} destination points")
    if len(src) < (2 if with_scale else 1):
        raise ValueError(f"need at least {2 if with_scale else 1} point pairs, got {len(src)}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    n = len(src)
    cov = xd.T @ xs / n
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    s = 1.0
    if with_scale:
        var_s = float(np.sum(xs * xs) / n)
        s = float(np.trace(np.diag(D) @ S) / var_s) if var_s > 1e-18 else 1.0
    t = mu_d - s * R @ mu_s
    return R, t, s


def apply_similarity(poses: np.ndarray, R: np.ndarray, t: np.ndarray, s: float) -> np.ndarray:
    """Left-apply ``x -> s R x + t`` to poses (N, 4, 4): rotations become ``R R_i``, positions
    ``s R p_i + t`` (the poses stay rigid; only the positions are scaled)."""
    out = np.array(poses, dtype=np.float64, copy=True)
    out[:, :3, :3] = np.einsum("ij,njk->nik", R, out[:, :3, :3])
    out[:, :3, 3] = s * out[:, :3, 3] @ R.T + t
    return out


def align(est: Trajectory, gt: Trajectory, method: str = "se3") -> tuple[Trajectory, dict[str, Any]]:
    """Align ``est`` onto ``gt`` (already associated: same length, pose i <-> pose i).

    method: 'se3' | 'sim3' | 'none'. Returns (aligned estimate, {"R", "t", "scale", "method"}).
    With fewer than 3 poses the alignment falls back to matching the first pose (se3) and, for
    sim3, the scale of the path lengths.
    """
    if len(est) != len(gt):
        raise ValueError("align() needs associated trajectories of equal length")
    if method not in ("se3", "sim3", "none"):
        raise ValueError(f"alignment must be 'se3', 'sim3' or 'none', got {method!r}")
    R, t, s = np.eye(3), np.zeros(3), 1.0
    if method != "none" and len(est) > 0:
        if len(est) >= 3:
            R, t, s = umeyama(est.positions, gt.positions, with_scale=method == "sim3")
        else:  # first-pose alignment
            T = gt.poses[0] @ inv_se3(est.poses[0])
            R = T[:3, :3]
            if method == "sim3":
                le, lg = path_length(est.positions), path_length(gt.positions)
                s = lg / le if le > 1e-12 else 1.0
            t = gt.positions[0] - s * R @ est.positions[0]
    aligned = Trajectory(est.stamps_ns, apply_similarity(est.poses, R, t, s))
    return aligned, {"R": R, "t": t, "scale": float(s), "method": method}


def path_length(positions: np.ndarray) -> float:
    p = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    return float(np.sum(np.linalg.norm(np.diff(p, axis=0), axis=1))) if len(p) > 1 else 0.0


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def _stats(errors: np.ndarray) -> dict[str, float | None]:
    e = np.asarray(errors, dtype=np.float64)
    if len(e) == 0:
        return {"rmse": None, "mean": None, "median": None, "max": None, "n": 0}
    return {"rmse": float(np.sqrt(np.mean(e * e))), "mean": float(np.mean(e)), "median": float(np.median(e)),
            "max": float(np.max(e)), "n": int(len(e))}


def ate(est_aligned: Trajectory, gt: Trajectory) -> dict[str, Any]:
    """Absolute trajectory error (translation, metres) of associated, aligned trajectories.
    Returns stats (rmse, mean, median, max, n) and ``errors`` (N,)."""
    if len(est_aligned) != len(gt):
        raise ValueError("ate() needs associated trajectories of equal length")
    err = np.linalg.norm(est_aligned.positions - gt.positions, axis=1)
    return {**_stats(err), "errors": err}


def rpe_pairs(gt: Trajectory, delta: float = 1, delta_unit: str = "frames") -> list[tuple[int, int]]:
    """Index pairs (i, j) for the RPE: ``j = i + delta`` frames, or the first j whose
    ground-truth path length from i reaches ``delta`` metres."""
    n = len(gt)
    if delta_unit == "frames":
        d = int(delta)
        if d < 1:
            raise ValueError(f"delta must be >= 1 frame, got {delta}")
        return [(i, i + d) for i in range(n - d)]
    if delta_unit != "m":
        raise ValueError(f"delta_unit must be 'frames' or 'm', got {delta_unit!r}")
    if not delta > 0:
        raise ValueError(f"delta must be > 0 m, got {delta}")
    steps = np.linalg.norm(np.diff(gt.positions, axis=0), axis=1)
    dist = np.concatenate([[0.0], np.cumsum(steps)])
    pairs = []
    for i in range(n):
        j = int(np.searchsorted(dist, dist[i] + delta - 1e-12, side="left"))
        if j < n:
            pairs.append((i, j))
    return pairs


def rpe(est: Trajectory, gt: Trajectory, delta: float = 1, delta_unit: str = "frames") -> dict[str, Any]:
    """Relative pose error of associated trajectories (``est`` in metric scale: stereo as is,
    mono after a sim3 alignment). Returns {"trans": stats (m), "rot": stats (deg), "pairs",
    "trans_errors", "rot_errors", "gt_dist"} and for ``delta_unit="m"`` also "trans_per_m"
    (m/m) and "rot_per_m" (deg/m) stats of the errors divided by the ground-truth path length."""
    if len(est) != len(gt):
        raise ValueError("rpe() needs associated trajectories of equal length")
    pairs = rpe_pairs(gt, delta, delta_unit)
    te, re, dist = [], [], []
    for i, j in pairs:
        Q = inv_se3(gt.poses[i]) @ gt.poses[j]
        P = inv_se3(est.poses[i]) @ est.poses[j]
        E = inv_se3(Q) @ P
        te.append(float(np.linalg.norm(E[:3, 3])))
        re.append(rotation_angle_deg(E[:3, :3]))
        dist.append(path_length(gt.positions[i:j + 1]))
    te_a, re_a, d_a = np.array(te), np.array(re), np.array(dist)
    out: dict[str, Any] = {"trans": _stats(te_a), "rot": _stats(re_a), "pairs": pairs,
                           "trans_errors": te_a, "rot_errors": re_a, "gt_dist": d_a}
    if delta_unit == "m":
        ok = d_a > 1e-9
        out["trans_per_m"] = _stats(te_a[ok] / d_a[ok])
        out["rot_per_m"] = _stats(re_a[ok] / d_a[ok])
    return out


KITTI_LENGTHS_M = (100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0)
SHORT_LENGTHS_M = (10.0, 20.0, 30.0, 40.0, 50.0)


def drift_lengths(path_m: float) -> tuple[float, ...]:
    """The segment lengths drift is measured over for a ground-truth path of ``path_m`` metres: the KITTI lengths it
    covers, else 10..50 m (short clips)."""
    return tuple(L for L in KITTI_LENGTHS_M if L <= path_m) or tuple(L for L in SHORT_LENGTHS_M if L <= path_m)


def drift(est: Trajectory, gt: Trajectory, lengths_m: tuple[float, ...] | None = None) -> dict[str, Any]:
    """KITTI odometry drift (the devkit's ``calcSequenceErrors``) of associated trajectories.

    For every start frame i and segment length L: j is the first frame whose ground-truth path
    from i reaches L; the error ``E = inv(inv(G_i) G_j) (inv(P_i) P_j)`` gives the translation
    drift |t(E)| / L and the rotation drift angle(R(E)) / L. The devkit uses L = 100..800 m and
    every 10th start frame; here every start frame, and ``lengths_m`` = the KITTI lengths the
    ground-truth path covers, else 10..50 m (short clips). Drift needs no alignment: it is relative.

    Returns {"lengths_m", "segments", "trans_pct" (mean, %), "rot_deg_per_100m" (mean), "per_length":
    {L: {"segments", "trans_pct", "rot_deg_per_100m"}}}; None values when no segment fits.
    """
    if len(est) != len(gt):
        raise ValueError("drift() needs associated trajectories of equal length")
    steps = np.linalg.norm(np.diff(gt.positions, axis=0), axis=1)
    dist = np.concatenate([[0.0], np.cumsum(steps)])
    total = float(dist[-1]) if len(dist) else 0.0
    if lengths_m is None:
        lengths_m = drift_lengths(total)
    t_all, r_all, per_length = [], [], {}
    for L in lengths_m:
        t_err, r_err = [], []
        for i in range(len(gt)):
            j = int(np.searchsorted(dist, dist[i] + L - 1e-9, side="left"))
            if j >= len(gt):
                break
            Q = inv_se3(gt.poses[i]) @ gt.poses[j]
            P = inv_se3(est.poses[i]) @ est.poses[j]
            E = inv_se3(Q) @ P
            t_err.append(float(np.linalg.norm(E[:3, 3])) / L)
            r_err.append(rotation_angle_deg(E[:3, :3]) / L)
        per_length[float(L)] = {"segments": len(t_err),
                                "trans_pct": 100.0 * float(np.mean(t_err)) if t_err else None,
                                "rot_deg_per_100m": 100.0 * float(np.mean(r_err)) if r_err else None}
        t_all += t_err
        r_all += r_err
    return {"lengths_m": [float(L) for L in lengths_m], "segments": len(t_all),
            "trans_pct": 100.0 * float(np.mean(t_all)) if t_all else None,
            "rot_deg_per_100m": 100.0 * float(np.mean(r_all)) if r_all else None, "per_length": per_length}


# --------------------------------------------------------------------------------------------
# Node outputs -> camera trajectory
# --------------------------------------------------------------------------------------------
def odom_to_camera(T_odom_base: np.ndarray, T_base_cam: np.ndarray, metric: bool = True) -> np.ndarray:
    """Node odometry (N, 4, 4) ``T_odom_base`` -> camera poses ``T_cam0_cam`` (N, 4, 4).

    The node publishes ``T_odom_base = T_bc T_cam0_cam T_bc^-1`` (odom = the base at the first
    frame; see ``geometry.relative_pose_in_base``), so ``T_cam0_cam = T_bc^-1 T_odom_base T_bc``.
    For monocular odometry the node applies only the rotation of ``T_base_cam`` (a unit-scale
    translation cannot take a metric lever arm): pass ``metric=False`` to do the same.
    """
    T_bc = np.array(T_base_cam, dtype=np.float64, copy=True)
    if not metric:
        T_bc[:3, 3] = 0.0
    T = np.asarray(T_odom_base, dtype=np.float64).reshape(-1, 4, 4)
    return np.einsum("ij,njk,kl->nil", inv_se3(T_bc), T, T_bc)


def evaluate(est: Trajectory, gt: Trajectory, alignment: str = "se3", max_diff_ns: int = 10_000_000,
             delta_m: float = 1.0, drift_lengths_m: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Associate, align and compute ATE and RPE (per frame and per ``delta_m`` metres).

    drift_lengths_m: the drift's segment lengths (None: from the path of the associated ground truth). Methods
    compared on one run should share them (``drift_lengths`` of the run's whole ground-truth path): a method that
    lost its last frames would otherwise be measured over shorter segments.

    Returns a JSON-friendly summary (``summary``) and the arrays behind it (``aligned``,
    ``gt_assoc``, ``ate_errors``, ``rpe_frame``...). Metrics are None when too few poses
    associate (fewer than 2).
    """
    ia, ib = associate(est.stamps_ns, gt.stamps_ns, max_diff_ns)
    e, g = est.subset(ia), gt.subset(ib)
    summary: dict[str, Any] = {"associated": int(len(ia)), "alignment": alignment, "scale": None,
                               "ate_m": None, "rpe_trans_m": None, "rpe_rot_deg": None,
                               "rpe_trans_per_m": None, "rpe_rot_deg_per_m": None, "rpe_delta_m": delta_m,
                               "gt_path_m": path_length(g.positions), "est_path_m": None,
                               "drift_pct": None, "drift_deg_per_100m": None, "drift_lengths_m": None,
                               "step_ratio_median": None}
    result: dict[str, Any] = {"summary": summary, "est_assoc": e, "gt_assoc": g, "aligned": None}
    if len(ia) < 2:
        return result
    aligned, info = align(e, g, alignment)
    a = ate(aligned, g)
    r1 = rpe(aligned, g, 1, "frames")
    rm = rpe(aligned, g, delta_m, "m")
    summary.update({
        "scale": info["scale"], "ate_m": a["rmse"], "ate_max_m": a["max"],
        "rpe_trans_m": r1["trans"]["rmse"], "rpe_rot_deg": r1["rot"]["rmse"],
        "rpe_trans_per_m": rm["trans_per_m"]["mean"], "rpe_rot_deg_per_m": rm["rot_per_m"]["mean"],
        "rpe_pairs_per_m": rm["trans_per_m"]["n"], "est_path_m": path_length(aligned.positions)})
    if alignment != "sim3":  # drift is relative, but a scale-free (mono) estimate has no metric drift
        d = drift(e, g, drift_lengths_m)
        summary.update({"drift_pct": d["trans_pct"], "drift_deg_per_100m": d["rot_deg_per_100m"],
                        "drift_lengths_m": d["lengths_m"]})
        result["drift"] = d
        # step length estimate / truth per associated frame pair (scale bias of metric odometry)
        t_est = np.linalg.norm(np.diff(e.positions, axis=0), axis=1)
        t_gt = np.linalg.norm(np.diff(g.positions, axis=0), axis=1)
        moving = t_gt > 1e-3  # 1 mm: below, the ratio is noise over noise (standstill)
        if moving.any():
            summary["step_ratio_median"] = float(np.median(t_est[moving] / t_gt[moving]))
    result.update({"aligned": aligned, "alignment_info": info, "ate_errors": a["errors"], "rpe_frame": r1,
                   "rpe_m": rm})
    return result
