"""Apply the project's shipping rule for a retrained matcher file to the JSON of one evaluation run, and say
whether the candidate may replace the shipped file (exit 0) or not (exit 1), criterion by criterion.

The rule (sessions 42/43, fixed before each challenger's training; docs/results.md): on the 200 seeded pairs at the
default α the candidate is >= the shipped file in precision AND in AUC@3px, and in relative pose (AUC@10°) it is
>= the shipped file on EuRoC and not below it on KITTI by more than 0.002 at any k. Both files must come from the
same run (same pairs, same keypoints), as ``bash scripts/results.sh eval_aliked_long3k v2`` writes them:

    .venv/bin/python scripts/shipping_rule.py out/eval_aliked_long3k_v2.json out/eval_pose_aliked_long3k_v2.json \\
        --candidate mambaglue@out/ablation_aliked_long3k_v2_reg600/mambaglue_aliked.pt

Nothing here is tuned: the numbers are compared as the evaluation wrote them (5 decimals).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KITTI_MARGIN = 0.002  # how far below the shipped file the candidate's KITTI AUC@10° may be at any k


def criteria(homography: dict, pose: dict, candidate: str, shipped: str = "mambaglue",
             kitti_margin: float = KITTI_MARGIN) -> list[tuple[str, float, float, bool]]:
    """(criterion, candidate's value, shipped value, holds) for every criterion of the rule.

    homography: ``mambaglue eval-homography --json`` output; pose: ``mambaglue eval-pose --json`` output; both must
    hold ``candidate`` and ``shipped`` (method names as the runs list them; the α 0.95 rows, not ``+fulldepth``)."""
    rows = []
    methods = homography["methods"]
    for name in (candidate, shipped):
        if name not in methods:
            raise KeyError(f"{name!r} is not a method of the homography run (it has {sorted(methods)})")
    for metric in ("precision", "auc@3px"):
        c, s = methods[candidate][metric], methods[shipped][metric]
        rows.append((f"homography {metric} >= shipped", c, s, c >= s))
    datasets = pose["datasets"]
    kitti = sorted(k for k in datasets if k.startswith("kitti"))
    if "euroc_stereo" not in datasets or not kitti:
        raise KeyError(f"the pose run needs euroc_stereo and kitti datasets (it has {sorted(datasets)})")
    for name in ["euroc_stereo", *kitti]:
        m = datasets[name]["methods"]
        for method in (candidate, shipped):
            if method not in m:
                raise KeyError(f"{method!r} is not a method of the pose run's {name}")
        c, s = m[candidate]["auc@10"], m[shipped]["auc@10"]
        if name == "euroc_stereo":
            rows.append(("pose euroc_stereo AUC@10 >= shipped", c, s, c >= s))
        else:
            rows.append((f"pose {name} AUC@10 >= shipped - {kitti_margin}", c, s, c >= s - kitti_margin))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("homography", type=Path, help="eval-homography JSON of the run")
    p.add_argument("pose", type=Path, help="eval-pose JSON of the run")
    p.add_argument("--candidate", required=True, help="the candidate's method name in both runs")
    p.add_argument("--shipped", default="mambaglue", help="the shipped file's method name (default: mambaglue)")
    args = p.parse_args(argv)
    try:
        rows = criteria(json.loads(args.homography.read_text()), json.loads(args.pose.read_text()),
                        args.candidate, args.shipped)
    except (OSError, ValueError, KeyError) as e:
        print(f"shipping_rule: {e}", file=sys.stderr)
        return 2
    for name, c, s, ok in rows:
        print(f"{'holds' if ok else 'FAILS'}  {name}: {c:.5f} against {s:.5f}")
    passed = all(ok for *_, ok in rows)
    print(f"{'SHIP' if passed else 'DO NOT SHIP'}: {args.candidate} {'passes' if passed else 'fails'} the rule "
          f"against {args.shipped}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
