"""Guards on the shipped weights, read through the normal loader (new weights are tested as they ship).

* The README's headline claim: the shipped MambaGlue is at least as precise and accurate (AUC@3px) as
  the released LightGlue of the same front end, on fixed real pairs: synthetic homographies of held-out
  photos (``../shared/data/photos/val``, skipped with the reason when absent). Fixed pairs and weights
  give the same numbers on every run: a failure is a regression, not noise. The settings are small to
  stay cheap. What held (seed 0):
    XFeat  320x240, 256 kp, 40 pairs, alpha 0.95:  precision 0.823 vs 0.672, AUC@3px 0.260 vs 0.200
                                      full depth:  precision 0.840 vs 0.674, AUC@3px 0.214 vs 0.164
    ALIKED 640x480, 512 kp,  8 pairs, full depth:  precision 0.948 vs 0.931, AUC@3px 0.565 vs 0.535
  XFeat used 8 pairs until its version-2 file shipped (2026-12-05); there one AUC@3px is a step function of
  8 corner errors, and the new file lost it at full depth (0.204 vs 0.216) while it led on 100 pairs of the
  same kind (0.210 vs 0.157; the version-1 file 0.196; ``eval-homography --pairs 100 --size 320x240
  --max-keypoints 256``). 40 pairs cost ~8 s here.
  ALIKED is compared at full depth only: at alpha 0.95 its regressor exits after ~2.6 of 9 layers and
  trades precision for time (README, docs/results.md), so there MambaGlue is *not* the more precise.
* The shipped ALIKED checkpoint produces correct matches on a real photo pair (no shared data needed).
"""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from mambaglue_ros import weights as W
from mambaglue_ros.evaluation.homography import build_matcher, evaluate, synthetic_pairs
from mambaglue_ros.paths import data_root

PHOTOS_VAL = data_root() / "photos" / "val"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# front end: (pairs, image size, keypoints, alphas compared)
SETTINGS = {"xfeat": (40, (320, 240), 256, (0.95, None)), "aliked": (8, (640, 480), 512, (None,))}


@pytest.mark.skipif(not PHOTOS_VAL.is_dir(), reason=f"shared photos not present ({PHOTOS_VAL})")
@pytest.mark.parametrize("features", ["xfeat", "aliked"])
def test_shipped_mambaglue_at_least_as_good_as_lightglue(features):
    n, size, keypoints, alphas = SETTINGS[features]
    pairs = list(synthetic_pairs(PHOTOS_VAL, n, seed=0, size=size))
    for alpha in alphas:
        matchers = {m: build_matcher(m, features, "cpu", keypoints, alpha=alpha) for m in ("mambaglue", "lightglue")}
        assert matchers["mambaglue"].weights_source == f"checkpoint:{W.packaged_checkpoint(features).name}"
        r = evaluate(pairs, features, list(matchers), max_keypoints=keypoints, progress=False, matchers=matchers)
        mg, lg = r["methods"]["mambaglue"], r["methods"]["lightglue"]
        summary = {k: (round(mg[k], 3), round(lg[k], 3)) for k in ("precision", "auc@3px", "mean_matches")}
        assert mg["mean_matches"] > 0.2 * keypoints, (features, alpha, summary)
        assert mg["precision"] >= lg["precision"], (features, alpha, summary)
        assert mg["auc@3px"] >= lg["auc@3px"], (features, alpha, summary)


def test_shipped_aliked_checkpoint_matches_a_real_pair():
    """The 30 MB ALIKED checkpoint (xz) through the default Matcher: many matches, nearly all on the
    true homography, at full depth and with the early exit it runs by default."""
    from skimage import data

    from mambaglue_ros.matcher import Matcher

    img0 = cv2.resize(data.astronaut(), (640, 480))
    A = cv2.getRotationMatrix2D((320, 240), 10, 0.9)
    img1 = cv2.warpAffine(img0, A, (640, 480))
    H = np.vstack([A, [0, 0, 1]])
    m = Matcher(features="aliked", device="cpu", max_keypoints=512)
    assert m.weights_source == f"checkpoint:{W.packaged_checkpoint('aliked').name}" and m.num_layers == 9
    f0, f1 = m.extract(img0), m.extract(img1)
    for alpha in (0.95, None):
        m.alpha = alpha
        r = m.match_features(f0, f1)
        p = np.c_[r.points0, np.ones(len(r))] @ H.T
        correct = np.linalg.norm(p[:, :2] / p[:, 2:] - r.points1, axis=1) < 3.0
        assert len(r) > 250 and correct.mean() > 0.95, (alpha, len(r), correct.mean(), r.stop_layer)
        assert r.stop_layer == 9 if alpha is None else r.stop_layer < 9
