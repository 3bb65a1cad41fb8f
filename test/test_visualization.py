"""The match drawing behind ``mambaglue match --viz`` and the node's debug image; the node must not
depend on the CLI (lower layers never import upper ones)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from mambaglue_ros.visualization import draw_matches

ROOT = Path(__file__).resolve().parents[1] / "mambaglue_ros"


def test_draw_matches_side_by_side_coloured_by_score():
    a = np.full((40, 60), 100, np.uint8)  # gray, smaller
    b = np.zeros((50, 70, 3), np.uint8)
    canvas = draw_matches(a, b, np.array([[10.0, 10.0], [30.0, 20.0]]), np.array([[5.0, 5.0], [60.0, 40.0]]),
                          np.array([0.0, 1.0]))
    assert canvas.shape == (50, 130, 3) and canvas.dtype == np.uint8
    assert (canvas[45, 10] == 0).all()  # below the shorter image: black
    # a score-1 match ends in a green dot, a score-0 match in a red one (RGB)
    g = canvas[40, 60 + 60]
    r = canvas[5, 60 + 5]
    assert g[1] > 200 and g[0] < 60 and r[0] > 200 and r[1] < 60
    # matches the pose does not explain: magenta, whatever their score
    marked = draw_matches(a, b, np.array([[10.0, 10.0], [30.0, 20.0]]), np.array([[5.0, 5.0], [60.0, 40.0]]),
                          np.array([0.0, 1.0]), inliers=np.array([True, False]))
    assert tuple(marked[40, 60 + 60]) == (255, 0, 255) and tuple(marked[5, 60 + 5]) == tuple(r)


def test_the_node_does_not_import_the_cli():
    tree = ast.parse((ROOT / "ros" / "node.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in modules if m and (m == "cli" or m.endswith(".cli"))}, modules
