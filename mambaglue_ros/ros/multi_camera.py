"""Several cameras, one process, one matcher: ``multi_camera_node --cameras front rear [--ros-args ...]``.

One ``MatcherNode`` per camera, each in the camera's namespace (``/front/image``, ``/front/matches``,
``/front/mambaglue_matcher/odom``, ...), all in one process and one executor, and all matching through one
shared network (``batching.BatchingMatcher``): pairs of different cameras that wait at the same time go through
one forward pass. That is the GPU's throughput path; on a CPU separate nodes are as fast (see ``batching.py``).
Parameters are per node as usual (``--params-file`` with ``/**`` or ``/front/mambaglue_matcher``); the front end,
weights, device and precision must be the same for all cameras (they share the network).

    multi_camera_node --cameras front rear --max-batch 8 --max-wait-ms 2 --ros-args -p features:=xfeat
"""
from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from ..batching import BatchingMatcher
from ..runtime import bound_teardown, dump_stacks_on_signals
from .node import MatcherNode, build_matcher

# parameters that decide the network itself (and the process's torch threads): every camera of one process must
# agree on them at start, and none may change them at run time (the node refuses, naming this reason)
SHARED_PARAMETERS = ("matcher", "weights", "extractor_weights", "mamba_ffn_rank", "device", "precision", "filter_threshold",
                     "detection_threshold", "resize_max", "early_exit", "num_threads")


class SharedMatcher:
    """``MatcherNode``'s ``matcher_factory`` for several nodes: the first node's parameters build the network,
    every node gets a client of it. A node whose network parameters differ is refused with the reason."""

    shared_parameters = SHARED_PARAMETERS  # MatcherNode refuses run-time changes of these

    def __init__(self, max_batch: int = 8, max_wait_ms: float = 2.0) -> None:
        self.max_batch, self.max_wait_ms = int(max_batch), float(max_wait_ms)
        self.batcher: BatchingMatcher | None = None
        self._key: dict[str, Any] | None = None
        self._tf_frames: set[tuple[str, str]] = set()  # the (odom, base) frames each camera broadcasts
        self._lock = threading.Lock()

    def __call__(self, parameters: dict[str, Any], features: str) -> Any:
        key = {"features": features, **{k: parameters[k] for k in SHARED_PARAMETERS}}
        if parameters["matcher"] == "orb":
            raise ValueError("the multi-camera node shares a network: matcher must be mambaglue or lightglue, not orb")
        with self._lock:
            frames = (parameters["odom_frame"], parameters["base_frame"])
            if parameters["publish_tf"] and frames in self._tf_frames:
                raise ValueError(f"two cameras would broadcast the TF {frames[0]} -> {frames[1]}: give each camera its "
                                 "own odom_frame / base_frame, or publish_tf for one camera only")
            if self.batcher is None:
                self.batcher = BatchingMatcher(build_matcher(parameters, features), self.max_batch, self.max_wait_ms)
                self._key = key
            elif key != self._key:
                differ = sorted(k for k in key if key[k] != self._key[k])
                raise ValueError("cameras of one multi-camera node share one network; these parameters differ "
                                 f"from the first camera's: {', '.join(f'{k}={key[k]!r} (first: {self._key[k]!r})' for k in differ)}")
            client = self.batcher.client()
            if parameters["publish_tf"]:
                self._tf_frames.add(frames)
        client.max_keypoints = parameters["max_keypoints"]
        client.alpha = parameters["alpha"] if parameters["early_exit"] else None
        return client

    def refuse_change(self, values: dict[str, Any], changes: dict[str, Any]) -> str | None:
        """The reason to refuse a run-time change of one camera's parameters (``values``: in effect, with what is
        pending; ``changes``: asked for), or None, and then the change is noted: a camera may not start
        broadcasting the TF another camera of this process broadcasts (two parents of one frame in the tree,
        REP-105; checked at start in ``__call__``). The frames being broadcast are unique, so the camera's own
        frames are the ones in ``values`` when it broadcasts: no node identity is needed."""
        new = {**values, **changes}
        old = (values["odom_frame"], values["base_frame"]) if values["publish_tf"] else None
        frames = (new["odom_frame"], new["base_frame"]) if new["publish_tf"] else None
        with self._lock:
            if frames is not None and frames != old and frames in self._tf_frames:
                return (f"another camera of this multi-camera node broadcasts the TF {frames[0]} -> {frames[1]}: give "
                        "this camera its own odom_frame / base_frame first")
            if old is not None:
                self._tf_frames.discard(old)
            if frames is not None:
                self._tf_frames.add(frames)
        return None

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def check_distinct_names(nodes: list[Any]) -> None:
    """ValueError where two camera nodes got the same name: a process-wide ``-r __ns:=/robot`` (what launch_ros's
    ``Node(namespace=...)`` passes) or ``-r __node:=...`` overrides every node's own namespace or name, so all
    cameras would be one node on one set of topics."""
    names = [n.get_fully_qualified_name() for n in nodes]
    if len(set(names)) != len(names):
        raise ValueError(f"the camera nodes are named {names}: a global namespace or node-name remap applies to every "
                         "camera of this process; put the common namespace into --cameras (e.g. --cameras "
                         "/robot/front /robot/rear) instead of -r __ns:=")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The non-ROS arguments (``rclpy.utilities.remove_ros_args`` first)."""
    ap = argparse.ArgumentParser(prog="multi_camera_node", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", nargs="+", required=True, help="one namespace per camera")
    ap.add_argument("--max-batch", type=int, default=8, help="most camera pairs in one forward pass")
    ap.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a pair waits for others to join")
    args = ap.parse_args(argv)
    if len(set(args.cameras)) != len(args.cameras):
        ap.error(f"camera namespaces must be distinct: {args.cameras}")
    return args


def main(args: list[str] | None = None) -> int:
    argv = sys.argv if args is None else args
    dump_stacks_on_signals()
    try:
        rclpy.init(args=argv)
        options = parse_arguments(rclpy.utilities.remove_ros_args(argv)[1:])
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:
        print(f"[multi_camera_node] error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    shared = SharedMatcher(options.max_batch, options.max_wait_ms)
    nodes: list[MatcherNode] = []
    executor = SingleThreadedExecutor()  # as the single node's rclpy.spin; each node has its own worker threads
    try:
        for camera in options.cameras:
            nodes.append(MatcherNode(command_line=argv, matcher_factory=shared, namespace=camera))
            executor.add_node(nodes[-1])
        check_distinct_names(nodes)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:  # startup errors: one clear line, non-zero exit
        if nodes and not rclpy.ok():
            return 0
        print(f"[multi_camera_node] error: {e}", file=sys.stderr)
        return 1
    finally:
        bound_teardown()  # whatever ends the process (error, signal), its teardown cannot hang it
        for node in nodes:
            node.destroy_node()
        shared.close()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
