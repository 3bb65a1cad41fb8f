"""Hold a target frame rate by steering the matcher's early-exit threshold alpha (and keypoints).

MambaGlue stops after the layer at which a fraction ``alpha`` of the points is confident: a higher
alpha runs more layers (more accurate, slower). ``AlphaController.update(latency_ms)`` is called
once per processed frame with the measured per-frame time and returns the (alpha, max_keypoints)
to use for the next frame. With the node's two-stage pipeline (``pipeline.py``) that time is the
time of the stage the knobs act on: in stereo the *cycle* time (the busier stage's time per frame, which
sets the processed rate), in mono the worker's (stage 1 there is the front end alone); without the
pipeline, the latency. The front end's resolution has a loop of its own on the extraction stage (below).
The node also takes frames no faster than the target (``pipeline.RateGate``), so spare
time goes into accuracy instead of into frames above the target.

Design
------
* Latency is smoothed with an exponential moving average (``smoothing`` = weight of the newest
  sample), so single slow frames (GC, scheduling) do not move the knobs.
* Budget: ``1000 / target_rate_hz * headroom`` ms. The headroom (default 0.9) leaves room for
  the latency jitter so that frames still finish within the frame period.
* Error: ``e = log(budget / latency_ema)`` (> 0: slack, < 0: over budget). Working on the log
  makes the step size relative, the same for a 10 ms and a 100 ms pipeline.
* Asymmetric deadband: any overshoot (e < 0) is acted on; slack is only used once it exceeds
  ``deadband`` (e.g. 0.15 = latency 14 % under budget). The latency is a step function of alpha
  (whole layers), so a symmetric setpoint would make alpha chatter between two layer counts;
  the band lets it settle at the highest layer count that fits.
* PI step (velocity form) on alpha: ``d_alpha = ki * e' + kp * (e' - e'_prev)`` where ``e'`` is
  the deadbanded error; alpha is clamped to [alpha_min, alpha_max] (clamping the output in the
  velocity form is the anti-windup).
* Keypoint budget (``adapt_keypoints``, on by default), priority: alpha is the first knob. Keypoints shrink
  only once alpha sits at alpha_min and the pipeline is still over budget; with slack, the
  keypoint budget grows back to ``max_keypoints`` *before* alpha is raised again. Fewer
  keypoints lose coverage of the image (hurting pose accuracy and robustness more than fewer
  refinement layers), so they are the last resort and the first thing restored. Keypoints
  change multiplicatively: ``K *= exp(keypoint_gain * e')``.
* Pose hypotheses (``adapt_pose_hypotheses``, on by default): the mono pose polishes up to
  ``max_pose_hypotheses`` MAGSAC models per frame (tens of ms on a small CPU, no matter how few
  keypoints). Once alpha and the keypoint budget are at their floors and the frame is still over
  budget, the hypotheses go down one at a time (every ``hypothesis_patience`` frames, so the
  smoothed latency can follow) to 1; with slack they come back *first*, before keypoints and alpha
  (they guard against the bas-relief ambiguity, a gross error rather than a small one).
* Front-end resolution (``adapt_resolution``, on by default), a loop of its own on the *extraction stage's*
  time (``update(..., stage1_ms=)``: the node's stage 1 = the front end plus the images' first self blocks;
  the node runs this loop only with the pipeline, where stage 1 is a stage of its own). The knobs above act
  on the matcher and the pose; a front end slower than the frame budget leaves them nothing to win (a 2-core
  AVX2 CPU extracts a 640x480 XFeat image in ~150 ms: at a 10 Hz target alpha and keypoints went to their
  floors and the node still ran at 5.9 Hz). When the smoothed stage-1 time exceeds the budget,
  ``image_scale`` (the linear size the front end sees, relative to its input after ``resize_max``) shrinks,
  ``scale *= exp(resolution_gain * e1 / 2)`` (extraction time ~ scale^2), down to ``min_image_scale``; with
  stage-1 slack beyond the deadband it grows back to 1. The two loops act on different stages, each on its
  own time. Keypoints stay in the input image's pixels; they are less precise at a lower resolution, so this
  is spent only where the front end alone misses the budget.
* ``target_rate_hz = 0``: fixed mode, alpha, keypoints and resolution never change.
"""
from __future__ import annotations

import math
from typing import Any

DEFAULT_RATE_CONFIG: dict[str, Any] = {
    "target_rate_hz": 0.0,   # 0 = fixed alpha mode
    "alpha_min": 0.80,
    "alpha_max": 1.0,
    "alpha_init": 0.95,
    "adapt_keypoints": True,  # alpha alone cannot reach a camera rate on a small CPU (alpha_min still runs layers)
    "min_keypoints": 256,
    "max_keypoints": 1024,   # also the initial keypoint budget
    "headroom": 0.9,         # budget = period * headroom
    "smoothing": 0.2,        # EMA weight of the newest latency sample, in (0, 1]
    "gain": 0.02,            # ki: alpha change per frame per unit log error
    "proportional_gain": 0.05,  # kp
    "deadband": 0.15,        # slack (log units) tolerated before alpha is raised
    "keypoint_gain": 0.1,    # K *= exp(keypoint_gain * e') per frame (small: the EMA lags)
    "adapt_pose_hypotheses": True,
    "max_pose_hypotheses": 6,  # the node passes its pose_hypotheses parameter
    "hypothesis_patience": 5,  # frames between two steps of the pose hypotheses
    "adapt_resolution": True,  # shrink the front end's input when extraction alone misses the budget
    "min_image_scale": 0.5,    # lowest image_scale (linear; 0.5 = a quarter of the pixels)
    "resolution_gain": 0.2,    # scale *= exp(resolution_gain * e1 / 2) per frame (e1: stage-1 log error)
}


def validate_rate_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with ``config``; raises ValueError naming the bad key."""
    cfg = dict(DEFAULT_RATE_CONFIG)
    if config:
        unknown = set(config) - set(cfg)
        if unknown:
            raise ValueError(f"unknown rate control option(s): {sorted(unknown)}")
        cfg.update(config)
    for key in ("target_rate_hz", "alpha_min", "alpha_max", "alpha_init", "headroom", "smoothing",
                "gain", "proportional_gain", "deadband", "keypoint_gain", "min_image_scale", "resolution_gain"):
        try:
            cfg[key] = float(cfg[key])
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {cfg[key]!r}") from None
        if not math.isfinite(cfg[key]):
            raise ValueError(f"{key} must be finite, got {cfg[key]}")
    for key in ("min_keypoints", "max_keypoints", "max_pose_hypotheses", "hypothesis_patience"):
        if isinstance(cfg[key], bool) or int(cfg[key]) != cfg[key]:
            raise ValueError(f"{key} must be an integer, got {cfg[key]!r}")
        cfg[key] = int(cfg[key])
    cfg["adapt_keypoints"] = bool(cfg["adapt_keypoints"])
    cfg["adapt_pose_hypotheses"] = bool(cfg["adapt_pose_hypotheses"])
    cfg["adapt_resolution"] = bool(cfg["adapt_resolution"])
    if not 0.1 <= cfg["min_image_scale"] <= 1.0:
        raise ValueError(f"min_image_scale must be in [0.1, 1] (1 = never downscale), got {cfg['min_image_scale']}")
    if cfg["max_pose_hypotheses"] < 1 or cfg["hypothesis_patience"] < 1:
        raise ValueError(f"max_pose_hypotheses and hypothesis_patience must be >= 1, got "
                         f"{cfg['max_pose_hypotheses']}, {cfg['hypothesis_patience']}")
    if cfg["target_rate_hz"] < 0:
        raise ValueError(f"target_rate_hz must be >= 0 (0 = fixed alpha), got {cfg['target_rate_hz']}")
    if not 0.0 < cfg["alpha_min"] <= 1.0 or not 0.0 < cfg["alpha_max"] <= 1.0:
        raise ValueError(f"alpha bounds must be in (0, 1], got [{cfg['alpha_min']}, {cfg['alpha_max']}]")
    if cfg["alpha_min"] > cfg["alpha_max"]:
        raise ValueError(f"alpha_min ({cfg['alpha_min']}) > alpha_max ({cfg['alpha_max']})")
    if not cfg["alpha_min"] <= cfg["alpha_init"] <= cfg["alpha_max"]:
        raise ValueError(f"alpha_init ({cfg['alpha_init']}) outside [alpha_min, alpha_max] = "
                         f"[{cfg['alpha_min']}, {cfg['alpha_max']}]")
    if cfg["min_keypoints"] < 1:
        raise ValueError(f"min_keypoints must be >= 1, got {cfg['min_keypoints']}")
    if cfg["min_keypoints"] > cfg["max_keypoints"]:
        raise ValueError(f"min_keypoints ({cfg['min_keypoints']}) > max_keypoints ({cfg['max_keypoints']})")
    if not 0.0 < cfg["headroom"] <= 1.0:
        raise ValueError(f"headroom must be in (0, 1], got {cfg['headroom']}")
    if not 0.0 < cfg["smoothing"] <= 1.0:
        raise ValueError(f"smoothing must be in (0, 1], got {cfg['smoothing']}")
    for key in ("gain", "proportional_gain", "deadband", "keypoint_gain", "resolution_gain"):
        if cfg[key] < 0:
            raise ValueError(f"{key} must be >= 0, got {cfg[key]}")
    return cfg


class AlphaController:
    """PI controller on log latency that steers alpha (then the keypoint budget) to a target rate.

    Args:
        config: options overriding ``DEFAULT_RATE_CONFIG`` (see the module docstring).

    Attributes:
        alpha: current early-exit threshold, in [alpha_min, alpha_max].
        max_keypoints: current keypoint budget, in [min_keypoints, max_keypoints].
        image_scale: current front-end resolution relative to the input, in [min_image_scale, 1].
        latency_ema_ms: smoothed latency (None before the first sample).
        stage1_ema_ms: smoothed extraction-stage time (None before the first sample).
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = validate_rate_config(config)
        self.reset()

    @property
    def fixed(self) -> bool:
        return self.config["target_rate_hz"] == 0.0

    @property
    def budget_ms(self) -> float:
        """Latency the controller aims under [ms] (inf in fixed mode)."""
        if self.fixed:
            return math.inf
        return 1000.0 / self.config["target_rate_hz"] * self.config["headroom"]

    def reset(self) -> None:
        """Back to the initial alpha / keypoints / pose hypotheses and full resolution; forget the time history."""
        self.alpha = self.config["alpha_init"]
        self._keypoints = float(self.config["max_keypoints"])
        self.latency_ema_ms: float | None = None
        self._prev_error = 0.0
        self.state = "fixed" if self.fixed else "starting"
        self.pose_hypotheses = self.config["max_pose_hypotheses"]
        self._since_hypothesis_step = 0
        self.image_scale = 1.0
        self.stage1_ema_ms: float | None = None

    @property
    def max_keypoints(self) -> int:
        return int(round(self._keypoints))

    def update(self, latency_ms: float, stage1_ms: float | None = None) -> tuple[float, int]:
        """Feed one frame's latency [ms] (the time the matcher/pose knobs act on) and, where known, its
        extraction stage's time ``stage1_ms`` (the resolution knob's); returns (alpha, max_keypoints) for the
        next frame, ``image_scale`` holds the front end's resolution for it.

        Non-finite or non-positive times are ignored (the current settings are returned / kept).
        """
        self._update_resolution(stage1_ms)
        cfg = self.config
        try:
            latency = float(latency_ms)
        except (TypeError, ValueError):
            return self.alpha, self.max_keypoints
        if self.fixed or not math.isfinite(latency) or latency <= 0.0:
            return self.alpha, self.max_keypoints
        s = cfg["smoothing"]
        self.latency_ema_ms = (latency if self.latency_ema_ms is None
                               else (1.0 - s) * self.latency_ema_ms + s * latency)
        e = math.log(self.budget_ms / self.latency_ema_ms)
        # Asymmetric deadband: react to any overshoot, only to slack beyond the band (see docstring).
        if e > cfg["deadband"]:
            e_band = e - cfg["deadband"]
        elif e < 0.0:
            e_band = e
        else:
            e_band = 0.0
        d_alpha = cfg["gain"] * e_band + cfg["proportional_gain"] * (e_band - self._prev_error)
        self._prev_error = e_band

        kp_min, kp_max = float(cfg["min_keypoints"]), float(cfg["max_keypoints"])
        at_alpha_min = self.alpha <= cfg["alpha_min"] + 1e-12
        at_keypoints_min = not cfg["adapt_keypoints"] or self._keypoints <= kp_min
        self._since_hypothesis_step += 1
        patient = self._since_hypothesis_step >= cfg["hypothesis_patience"]
        if cfg["adapt_pose_hypotheses"] and e_band < 0.0 and at_alpha_min and at_keypoints_min \
                and self.pose_hypotheses > 1:
            # Last knob: fewer pose hypotheses, one at a time.
            self.state = "lowering pose hypotheses"
            if patient:
                self.pose_hypotheses -= 1
                self._since_hypothesis_step = 0
            return self.alpha, self.max_keypoints
        if cfg["adapt_pose_hypotheses"] and e_band > 0.0 and self.pose_hypotheses < cfg["max_pose_hypotheses"]:
            # Slack: the pose hypotheses come back first.
            self.state = "raising pose hypotheses"
            if patient:
                self.pose_hypotheses += 1
                self._since_hypothesis_step = 0
            return self.alpha, self.max_keypoints
        if cfg["adapt_keypoints"] and e_band < 0.0 and at_alpha_min:
            # Last resort: alpha cannot go lower and we are still over budget.
            self.state = "over budget at the floor" if self._keypoints <= kp_min else "lowering keypoints"
            self._keypoints = max(kp_min, self._keypoints * math.exp(cfg["keypoint_gain"] * e_band))
            return self.alpha, self.max_keypoints
        if cfg["adapt_keypoints"] and e_band > 0.0 and self._keypoints < kp_max:
            # Restore the keypoint budget before spending slack on alpha.
            self.state = "raising keypoints"
            self._keypoints = min(kp_max, self._keypoints * math.exp(cfg["keypoint_gain"] * e_band))
            return self.alpha, self.max_keypoints
        if cfg["adapt_keypoints"] and d_alpha > 0.0 and self._keypoints < kp_max:
            d_alpha = 0.0  # priority: no alpha increase (e.g. the P term unwinding) before keypoints are back
        old = self.alpha
        self.alpha = min(cfg["alpha_max"], max(cfg["alpha_min"], self.alpha + d_alpha))
        if self.alpha < old:
            self.state = "lowering alpha"
        elif self.alpha > old:
            self.state = "raising alpha"
        elif e_band < 0.0:
            self.state = "over budget at the floor"  # alpha at alpha_min, keypoints not adaptable
        else:
            self.state = "at the ceiling" if e_band > 0.0 else "holding"
        return self.alpha, self.max_keypoints

    def _update_resolution(self, stage1_ms: float | None) -> None:
        """The resolution loop (module docstring): hold the extraction stage's time under the budget."""
        cfg = self.config
        try:
            t = float(stage1_ms) if stage1_ms is not None else math.nan
        except (TypeError, ValueError):
            return
        if self.fixed or not cfg["adapt_resolution"] or not math.isfinite(t) or t <= 0.0:
            return
        s = cfg["smoothing"]
        self.stage1_ema_ms = t if self.stage1_ema_ms is None else (1.0 - s) * self.stage1_ema_ms + s * t
        e = math.log(self.budget_ms / self.stage1_ema_ms)
        if e < 0.0:
            step = e
        elif e > cfg["deadband"] and self.image_scale < 1.0:
            step = e - cfg["deadband"]
        else:
            return
        # extraction time grows with the pixels, scale^2: half the log error in log scale
        self.image_scale = min(1.0, max(cfg["min_image_scale"],
                                        self.image_scale * math.exp(cfg["resolution_gain"] * step / 2.0)))

    def diagnostics(self) -> dict[str, Any]:
        """The controller's state for /diagnostics: what it does now, its budget and the time it holds
        under it [ms] (0 before the first frame; budget 0 in fixed mode)."""
        return {"rate_control": self.state, "rate_budget_ms": 0.0 if self.fixed else self.budget_ms,
                "rate_time_ema_ms": self.latency_ema_ms or 0.0, "rate_alpha": self.alpha,
                "rate_max_keypoints": self.max_keypoints, "rate_pose_hypotheses": self.pose_hypotheses,
                "rate_image_scale": self.image_scale, "rate_stage1_ema_ms": self.stage1_ema_ms or 0.0}
