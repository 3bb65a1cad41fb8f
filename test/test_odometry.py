"""Odometry composition, covariance propagation and twist, checked against Monte-Carlo sampling."""
from __future__ import annotations

import numpy as np
import pytest

from mambaglue_ros import geometry as G
from mambaglue_ros.odometry import (MAX_PREDICTION_RATIO, MAX_PREDICTION_S, ConstantVelocity, OdometryIntegrator,
                                    between_covariance, body_twist, compose_covariance, prediction_covariance,
                                    se3_power)


def perturb(T: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Left perturbation in the parent frame (geometry's convention): R = exp(d_theta) R, t = t + d_t."""
    out = np.eye(4)
    out[:3, :3] = G.so3_exp(delta[3:]) @ T[:3, :3]
    out[:3, 3] = T[:3, 3] + delta[:3]
    return out


def error(T: np.ndarray, T_hat: np.ndarray) -> np.ndarray:
    """The perturbation taking T_hat to T (inverse of ``perturb``)."""
    return np.concatenate([T[:3, 3] - T_hat[:3, 3], G.so3_log(T[:3, :3] @ T_hat[:3, :3].T)])


def sample_covariance(fn, means, covs, n=15000, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    nominal = fn(*means)
    draws = [rng.multivariate_normal(np.zeros(6), c, size=n) for c in covs]
    errors = np.array([error(fn(*[perturb(T, d[k]) for T, d in zip(means, draws)]), nominal) for k in range(n)])
    return np.cov(errors.T)


def random_pose(rng, angle=0.4, dist=1.0) -> np.ndarray:
    return G.make_transform(G.so3_exp(rng.normal(0, angle, 3)), rng.normal(0, dist, 3))


def random_cov(rng, sigma_t=0.05, sigma_r=0.03) -> np.ndarray:
    A = rng.normal(0, 1, (6, 6)) * np.r_[[sigma_t] * 3, [sigma_r] * 3][:, None] * 0.5
    return A @ A.T + np.diag(np.r_[[sigma_t**2] * 3, [sigma_r**2] * 3])


def assert_cov_close(predicted, sampled, rtol=0.08):
    scale = np.sqrt(np.outer(np.diag(sampled), np.diag(sampled)))
    assert np.all(np.abs(predicted - sampled) <= rtol * scale + 1e-9), (predicted, sampled)


def test_yaw_uncertainty_spreads_across_a_1m_step():
    """The issue's numbers: yaw sigma 0.1 rad, then a 1 m step ahead -> ~0.01 m^2 across the step."""
    cov_ref = np.diag([0.0, 0.0, 0.0, 0.0, 0.0, 0.1**2])
    step = G.make_transform(np.eye(3), [1.0, 0.0, 0.0])
    cov = compose_covariance(np.eye(4), cov_ref, step, np.zeros((6, 6)))
    assert cov[1, 1] == pytest.approx(0.01)  # across track (y)
    assert cov[0, 0] == pytest.approx(0.0)   # along track: first order unaffected
    assert cov[1, 5] == pytest.approx(0.01)  # position and heading errors are correlated


def test_composed_covariance_matches_monte_carlo():
    rng = np.random.default_rng(3)
    T_ab, T_bc = random_pose(rng), random_pose(rng)
    cov_ab, cov_bc = random_cov(rng), random_cov(rng)
    sampled = sample_covariance(lambda a, b: a @ b, [T_ab, T_bc], [cov_ab, cov_bc])
    assert_cov_close(compose_covariance(T_ab, cov_ab, T_bc, cov_bc), sampled)
    # what the node did before: the reference's covariance added without the lever arm
    R = np.kron(np.eye(2), T_ab[:3, :3])
    old = cov_ab + R @ cov_bc @ R.T
    scale = np.sqrt(np.outer(np.diag(sampled), np.diag(sampled)))
    assert np.any(np.abs(old - sampled) > 0.08 * scale)


def test_between_covariance_matches_monte_carlo():
    rng = np.random.default_rng(4)
    T_ra, T_rb = random_pose(rng), random_pose(rng)
    cov_ra, cov_rb = random_cov(rng), random_cov(rng)
    T_ab, cov = between_covariance(T_ra, cov_ra, T_rb, cov_rb)
    np.testing.assert_allclose(T_ab, G.invert(T_ra) @ T_rb, atol=1e-12)
    sampled = sample_covariance(lambda a, b: G.invert(a) @ b, [T_ra, T_rb], [cov_ra, cov_rb])
    assert_cov_close(cov, sampled)


def test_twist_is_in_the_child_frame_with_its_covariance():
    # the body drove 1 m along its own x while turning 90 deg left, in 0.5 s: at the end of the
    # step the previous x axis is the body's -y axis
    T = G.make_transform(G.so3_exp([0.0, 0.0, np.pi / 2]), [1.0, 0.0, 0.0])
    twist, cov = body_twist(T, np.diag([1e-4] * 3 + [1e-5] * 3), 0.5)
    np.testing.assert_allclose(twist, [0.0, -2.0, 0.0, 0.0, 0.0, np.pi], atol=1e-12)
    old = np.concatenate([T[:3, 3], G.so3_log(T[:3, :3])]) / 0.5  # what the node did: reference frame
    assert np.linalg.norm(old - twist) > 1.0
    rng = np.random.default_rng(5)
    T_step, cov_step = random_pose(rng, angle=0.2, dist=0.3), random_cov(rng)
    rng_s = np.random.default_rng(6)
    draws = rng_s.multivariate_normal(np.zeros(6), cov_step, size=15000)
    samples = np.array([body_twist(perturb(T_step, d), np.zeros((6, 6)), 0.1)[0] for d in draws])
    _, predicted = body_twist(T_step, cov_step, 0.1)
    assert_cov_close(predicted, np.cov(samples.T))


def test_integrator_keyframe_policy_twist_is_instantaneous():
    """Two frames against one keyframe: the twist is the motion between them, not the mean since the keyframe."""
    odom = OdometryIntegrator()
    cov = np.diag([1e-4] * 3 + [1e-6] * 3)
    odom.step(0, 0, np.eye(4), np.zeros((6, 6)))
    odom.set_reference(0)
    first = odom.step(100_000_000, 0, G.make_transform(np.eye(3), [0.1, 0.0, 0.0]), cov)
    np.testing.assert_allclose(first.twist, [1.0, 0, 0, 0, 0, 0], atol=1e-9)  # from the keyframe's own pose
    # accelerating: 0.1 m in the first 0.1 s, 0.3 m in the next; still relative to the keyframe
    out = odom.step(200_000_000, 0, G.make_transform(np.eye(3), [0.4, 0.0, 0.0]), cov)
    np.testing.assert_allclose(out.twist, [3.0, 0, 0, 0, 0, 0], atol=1e-9)  # not the 2 m/s mean since the keyframe
    np.testing.assert_allclose(out.T_odom_base[:3, 3], [0.4, 0, 0], atol=1e-12)
    # two estimates against the keyframe, taken as independent: twice the step covariance / dt^2
    np.testing.assert_allclose(np.diag(out.twist_covariance)[:3], 2e-4 / 0.01, rtol=1e-3)  # + a small lever arm
    odom.set_reference(300_000_000)  # a reference without a pose (tracking failed there): no twist across it
    assert odom.step(400_000_000, 300_000_000, np.eye(4), cov).twist is None


def test_integrator_covariance_grows_and_resets():
    odom = OdometryIntegrator()
    cov = np.diag([1e-4] * 3 + [1e-4] * 3)
    step = G.make_transform(G.so3_exp([0, 0, 0.05]), [0.5, 0.0, 0.0])
    stamp, traces = 0, []
    odom.set_reference(stamp)
    for k in range(1, 20):
        out = odom.step(k, stamp, step, cov)
        odom.set_reference(k)
        stamp = k
        traces.append(np.trace(out.covariance[:3, :3]))
    assert all(b > a for a, b in zip(traces, traces[1:]))
    # position variance grows faster than linearly: heading errors swing the later steps
    assert traces[-1] > 19 * np.trace(cov[:3, :3]) * 2
    with pytest.raises(ValueError, match="reference"):
        odom.step(100, 3, step, cov)
    with pytest.raises(ValueError, match="non-finite"):
        odom.step(100, stamp, step * np.nan, cov)
    start = G.make_transform(np.eye(3), [1.0, 2.0, 0.0])
    odom.reset(start, np.eye(6) * 1e-2)
    np.testing.assert_allclose(odom.step(200, 0, np.eye(4), np.zeros((6, 6))).T_odom_base, start)


def test_se3_power_continues_the_screw_motion():
    rng = np.random.default_rng(3)
    T = random_pose(rng)
    np.testing.assert_allclose(se3_power(T, 1.0), T, atol=1e-12)
    np.testing.assert_allclose(se3_power(T, 2.0), T @ T, atol=1e-12)
    np.testing.assert_allclose(se3_power(T, 3.0), T @ T @ T, atol=1e-12)
    np.testing.assert_allclose(se3_power(T, 0.0), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(se3_power(T, -1.0), np.linalg.inv(T), atol=1e-12)
    half = se3_power(T, 0.5)
    np.testing.assert_allclose(half @ half, T, atol=1e-12)
    straight = G.make_transform(np.eye(3), [1.0, -2.0, 0.5])  # no rotation: the translation scales
    np.testing.assert_allclose(se3_power(straight, 2.5)[:3, 3], [2.5, -5.0, 1.25], atol=1e-12)
    # a car on a circle: 10 deg and 1.2 m per step; 2.5 steps on lie on the same circle
    step = G.make_transform(G.so3_exp([0.0, np.radians(10.0), 0.0]), [0.0, 0.0, 1.2])
    ahead = se3_power(step, 2.5)
    np.testing.assert_allclose(ahead, se3_power(step, 2.0) @ se3_power(step, 0.5), atol=1e-12)
    assert G.rotation_angle_deg(ahead[:3, :3], np.eye(3)) == pytest.approx(25.0)


def test_constant_velocity_predicts_from_the_last_measured_step():
    cv = ConstantVelocity()
    NS = 100_000_000
    assert cv.predict(NS) is None  # nothing measured yet
    step = G.make_transform(G.so3_exp([0.0, 0.05, 0.0]), [0.1, 0.0, 1.2])  # over 0.1 s
    T2 = G.make_transform(np.eye(3), [5.0, 0.0, 3.0])  # the last pose, which the caller holds

    def place(stamp_ns: int) -> np.ndarray:
        return T2 @ cv.predict(stamp_ns)[0]

    cv.observe(2 * NS, 1 * NS, step)
    np.testing.assert_allclose(place(3 * NS), T2 @ step, atol=1e-12)
    np.testing.assert_allclose(place(5 * NS), T2 @ step @ step @ step, atol=1e-12)
    np.testing.assert_allclose(place(2 * NS + NS // 2), T2 @ se3_power(step, 0.5), atol=1e-12)
    # no step covariance given: the prediction's own, as large as the motion
    np.testing.assert_allclose(cv.predict(5 * NS)[1], prediction_covariance(step @ step @ step), atol=1e-12)
    assert cv.predict(2 * NS) is None and cv.predict(NS) is None  # not after the last pose: nothing to predict
    # at most MAX_PREDICTION_RATIO steps on (a step over a short time would multiply its noise by the ratio) ...
    ratio_ns = int(MAX_PREDICTION_RATIO * NS)
    assert cv.predict(2 * NS + ratio_ns) is not None and cv.predict(2 * NS + ratio_ns + 1) is None
    # ... and at most MAX_PREDICTION_S: a step against a keyframe 0.4 s back gives its mean velocity
    cv.observe(10 * NS, 6 * NS, step)
    np.testing.assert_allclose(place(14 * NS), T2 @ step, atol=1e-12)
    span_ns = int(MAX_PREDICTION_S * 1e9)
    assert cv.predict(10 * NS + span_ns) is not None and cv.predict(10 * NS + span_ns + 1) is None
    # no velocity from a step over more than the span, nor from one without a reference; the place is still news
    for ref in (10 * NS - span_ns - 1, None):
        cv.observe(10 * NS, ref, step)
        assert cv.predict(11 * NS) is None
    cv.observe(20 * NS, 19 * NS, step)
    assert cv.predict(21 * NS) is not None
    cv.reset()
    assert cv.predict(21 * NS) is None


def test_integrator_places_a_frame_without_a_pose_where_the_motion_leads():
    """A lost frame's place (its anchor when later frames are posed against it) is the last measured motion,
    continued, with a covariance as large as that motion; without a measured motion the last pose."""
    NS = 100_000_000
    odom = OdometryIntegrator()
    step = G.make_transform(G.so3_exp([0.0, 0.02, 0.0]), [0.0, 0.0, 1.2])  # a car: 1.2 m in 0.1 s
    cov = np.diag([1e-4] * 3 + [1e-6] * 3)
    odom.set_reference(0)
    held, held_cov = odom.place(NS)  # nothing measured yet: the last pose
    np.testing.assert_array_equal(held, np.eye(4))
    odom.keep_anchors(0, (0,))
    first = odom.step(NS, 0, step, cov)
    odom.set_reference(NS)
    odom.keep_anchors(NS, (NS, 0))
    T_place, cov_place = odom.place(NS)  # the frame just posed: its own pose
    np.testing.assert_array_equal(T_place, first.T_odom_base)
    # frames 2 and 3 lost; frame 3 is kept as a fallback: its place is two steps on, its covariance wider
    odom.keep_anchors(2 * NS, (NS, 0))
    odom.keep_anchors(3 * NS, (NS, 0, 3 * NS))
    T3, cov3 = odom.place(3 * NS)
    np.testing.assert_allclose(T3, step @ step @ step, atol=1e-12)
    T_delta = step @ step
    R = np.kron(np.eye(2), step[:3, :3].T)  # the step's covariance, turned into its end frame, two steps: x 2^2
    np.testing.assert_allclose(cov3, compose_covariance(first.T_odom_base, first.covariance, T_delta,
                                                        prediction_covariance(T_delta) + 4 * R @ cov @ R.T),
                               atol=1e-15)
    assert np.sqrt(np.diag(cov3)[:3]).min() > 2.3  # the 2.4 m predicted (on an arc): one sigma
    # frame 4 posed against frame 3 (the tracker's last frame without a pose): composed with that place
    out = odom.step(4 * NS, 3 * NS, step, cov)
    np.testing.assert_allclose(out.T_odom_base, step @ step @ step @ step, atol=1e-12)
    assert out.twist is None  # the motion up to frame 3 is predicted, not measured: no velocity from it
    moved = float(np.linalg.norm(T_delta[:3, 3]))
    np.testing.assert_allclose(prediction_covariance(T_delta), np.diag([moved**2] * 3 + [0.04**2] * 3), atol=1e-12)
    np.testing.assert_array_equal(prediction_covariance(np.eye(4)), np.zeros((6, 6)))  # standing still: nothing
    still = OdometryIntegrator()  # ... but a still camera's place still grows by its measured step's uncertainty
    still.set_reference(0)
    still.step(NS, 0, np.eye(4), cov)
    np.testing.assert_allclose(still.place(4 * NS)[1], cov + 9 * cov, atol=1e-15)  # its own, and 3 steps' worth
    # a reset forgets the motion: a lost frame after it keeps the reset pose
    odom.reset()
    odom.set_reference(10 * NS)
    np.testing.assert_array_equal(odom.place(11 * NS)[0], np.eye(4))
