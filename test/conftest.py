"""Test harness: keep every ROS process of a test run on loopback, in its own domain and log dir.

Set at import time, before any test module imports rclpy (rclpy reads them at init):
  ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST  Fast DDS discovers over 127.0.0.1 only (no multicast
                                           out of the machine's network interface).
  ROS_DOMAIN_ID=100..199                    parallel test runs on one machine do not see each other: each
                                           run holds an flock on /tmp/mambaglue_ros_domain_<id>.lock for
                                           its id (pid % 100 first), so two runs never share one.
  ROS_LOG_DIR=<temp dir>                   rclpy log files do not land in ~/.ros/log.
Subprocesses started by tests inherit them.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

_LOG_DIR = tempfile.mkdtemp(prefix="mambaglue_ros_test_log_")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"


def _claim_domain_id() -> int:
    """A ROS domain id in 100..199 that no other test run on this machine holds (an flock on a lock
    file, released when this process exits). pid % 100 alone collided between concurrent runs, and a
    run that saw another run's topics could fail for reasons that had nothing to do with it."""
    import fcntl

    start = os.getpid() % 100
    for k in range(100):
        domain = 100 + (start + k) % 100
        handle = open(os.path.join(tempfile.gettempdir(), f"mambaglue_ros_domain_{domain}.lock"), "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _DOMAIN_LOCK.append(handle)  # keep it open (and locked) for the life of this process
        return domain
    return 100 + start  # every id held: fall back to the old choice


_DOMAIN_LOCK: list = []
os.environ["ROS_DOMAIN_ID"] = str(_claim_domain_id())
os.environ["ROS_LOG_DIR"] = _LOG_DIR
os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; conflicts with the discovery range
atexit.register(shutil.rmtree, _LOG_DIR, ignore_errors=True)


def _ros_available() -> str | None:
    """None when rclpy and our message package import, else why not."""
    try:
        import rclpy  # noqa: F401
        from mambaglue_ros.msg import Matches  # noqa: F401
    except Exception as exc:  # ImportError, or a missing shared library of the ROS wheels
        return f"rclpy / mambaglue_ros.msg not importable: {exc}"
    return None


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``ros`` where rclpy or the built message package is missing."""
    ros_items = [item for item in items if "ros" in item.keywords]
    reason = _ros_available() if ros_items else None
    if reason:
        for item in ros_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def ros_context():
    """An initialised rclpy Context of its own (not the global one), shut down afterwards."""
    rclpy = pytest.importorskip("rclpy")
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        context.try_shutdown()


def pytest_configure(config):
    # lark (pulled in by rclpy's type-description support) imports deprecated sre_* modules
    config.addinivalue_line("filterwarnings", "ignore:module 'sre_:DeprecationWarning")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one thread is as fast, and far faster than two on a busy shared CPU.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
