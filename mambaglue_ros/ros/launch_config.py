"""What ``launch/matcher.launch.py`` passes to the node, as plain Python (testable without launch).

The launch file only reads its arguments and hands them to ``node_arguments``; everything that
can go wrong (unknown mode, a remap that does not apply to the mode, a bad log level) is decided
and tested here.

Precedence: an argument given on the command line (``mode:=``, ``transport:=``) overrides the
params file; an empty one leaves the file's value in effect (``params_file:=config/stereo.yaml``
alone runs stereo).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from .params import load_params_yaml

PACKAGE = "mambaglue_ros"
EXECUTABLE = "matcher_node"
NODE_NAME = "mambaglue_matcher"
TRANSPORTS = ("raw", "compressed")

# default params file per mode, relative to the package's share directory
DEFAULT_PARAMS = {"mono": "config/matcher.yaml", "stereo": "config/stereo.yaml"}

# launch argument -> the node's own (relative) topic name it remaps, per mode
REMAP_ARGUMENTS: dict[str, dict[str, str]] = {
    "mono": {"image": "image", "camera_info": "camera_info"},
    "stereo": {
        "left_image": "left/image_rect",
        "right_image": "right/image_rect",
        "left_camera_info": "left/camera_info",
        "right_camera_info": "right/camera_info",
    },
}
# The compressed transport subscribes to "<image topic>/compressed" (image_transport naming):
# remapping an image topic also remaps its compressed sibling.
_COMPRESSED_SUFFIX = "/compressed"

LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")

# every argument launch/matcher.launch.py declares -> its default (a test keeps the two in step)
LAUNCH_ARGUMENTS: dict[str, str] = {
    "mode": "",
    "params_file": "",
    "transport": "",
    "lifecycle": "false",
    "autostart": "true",
    "namespace": "",
    "use_sim_time": "",
    "log_level": "info",
    "image": "",
    "camera_info": "",
    "left_image": "",
    "right_image": "",
    "left_camera_info": "",
    "right_camera_info": "",
}


def parse_bool(value: bool | str) -> bool:
    """Launch-style boolean ("true"/"false", any case, or a bool) -> bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got '{value}'")


def node_arguments(mode: str, params_file: str, namespace: str, use_sim_time: bool | str,
                   remaps: Mapping[str, str], share_dir: str, log_level: str = "info", transport: str = "",
                   lifecycle: bool | str = False) -> dict[str, Any]:
    """Keyword arguments for launch_ros ``Node(package=PACKAGE, executable=EXECUTABLE, **kw)``.

    mode: "mono", "stereo", or "" = the params file's mode (mono without a params file).
    params_file: YAML path; empty = ``share_dir/DEFAULT_PARAMS[mode]``.
    namespace: node namespace ("" = none).
    use_sim_time: bool or launch string ("true"/"false"); "" = the params file's value (false without one).
    remaps: {launch argument name (REMAP_ARGUMENTS[mode]): target topic}; empty targets are
        ignored, a non-empty one that does not apply to ``mode`` is an error.
    share_dir: the package's share directory (get_package_share_directory(PACKAGE)).
    log_level: debug | info | warn | error | fatal.
    transport: "raw", "compressed", or "" = the params file's transport.
    lifecycle: start the lifecycle (managed) node, ``matcher_node --lifecycle``.

    Returns {"parameters": [params file, overrides], "remappings": [(from, to), ...],
    "namespace": str, "arguments": [...]}.
    """
    mode = mode.strip().lower()
    params_file = params_file.strip()
    if params_file and not os.path.isfile(params_file):  # launch_ros would only warn and run on the defaults
        raise ValueError(f"params_file '{params_file}' does not exist")
    overrides: dict[str, Any] = {}
    if mode:
        overrides["mode"] = mode  # an explicit mode wins over the file's
    elif params_file:
        mode = str(load_params_yaml(params_file, NODE_NAME).get("mode", "mono")).strip().lower()
    else:
        mode = "mono"
    if mode not in DEFAULT_PARAMS:
        raise ValueError(f"mode must be mono or stereo, got '{mode}'")
    level = log_level.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got '{log_level}'")
    transport = transport.strip().lower()
    if transport and transport not in TRANSPORTS:
        raise ValueError(f"transport must be raw or compressed, got '{transport}'")
    if transport:
        overrides["transport"] = transport
    if not (isinstance(use_sim_time, str) and not use_sim_time.strip()):
        overrides["use_sim_time"] = parse_bool(use_sim_time)
    params_file = params_file or os.path.join(share_dir, DEFAULT_PARAMS[mode])

    remappings: list[tuple[str, str]] = []
    applicable = REMAP_ARGUMENTS[mode]
    for argument, target in remaps.items():
        target = (target or "").strip()
        if not target:
            continue
        if argument not in applicable:
            other = [m for m, args in REMAP_ARGUMENTS.items() if argument in args]
            where = f"applies to mode {other[0]} only" if other else "is not a topic argument"
            raise ValueError(f"remap '{argument}:={target}' {where} (mode is {mode})")
        topic = applicable[argument]
        remappings.append((topic, target))
        if topic.endswith("image") or topic.endswith("image_rect"):
            remappings.append((topic + _COMPRESSED_SUFFIX, target.rstrip("/") + _COMPRESSED_SUFFIX))

    return {
        # explicit arguments win over the file's values; empty ones leave the file in charge
        "parameters": [params_file, overrides],
        "remappings": remappings,
        "namespace": namespace.strip(),
        "arguments": (["--lifecycle"] if parse_bool(lifecycle) else []) + ["--ros-args", "--log-level", level],
    }
