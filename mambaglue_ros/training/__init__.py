"""MambaGlue training on synthetic homography pairs: pair generator, feature cache, losses, two-stage loop.

    mambaglue train --config config/train_xfeat.yaml [--stage 1|2|both] [--max-minutes M] [--resume] [--out DIR]

Modules: ``homography`` (pairs and ground truth), ``dataset`` (feature cache, batches), ``losses``
(assignment NLL, confidence BCE), ``train`` (the loop, checkpoints, export).
"""
from .homography import HomographyPair, gt_matches_from_homography, make_pair, warp_points

__all__ = ["HomographyPair", "gt_matches_from_homography", "make_pair", "warp_points"]
