"""mambaglue_ros: MambaGlue feature matching and relative pose, with a thin ROS 2 node on top."""
import os
import pkgutil

# Large CPU tensors on transparent huge pages (PyTorch's own switch; the kernel must allow THP, "madvise" or
# "always"). Every fresh buffer of ALIKED's and DISK's full-resolution feature maps (40-160 MB each) otherwise costs
# one page fault per 4 KiB, on every image: ALIKED-n16 853 -> 478 ms and DISK 3533 -> 2841 ms per 640x480 image on
# one CPU thread, XFeat 50 -> 47 ms, peak memory +30-130 MB (docs/results.md, Speed). PyTorch reads the variable
# once, at its first allocation (when torch is imported), so it is set here, before this package imports torch; a
# program that imports torch first sets it itself. A value the user set is kept: 0 turns it off (where huge pages
# are scarce and the kernel compacts memory on demand, a page fault can then stall).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# The generated message module (mambaglue_ros.msg) is built by rosidl into site-packages, not
# into this source tree: let it join this package (see docs/development.md "Messages").
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"

__all__ = ["Matcher", "FeatureExtractor", "Features", "MatchResult"]


def __getattr__(name: str):
    # Lazy: `import mambaglue_ros.msg` (ROS tooling) should not pay for importing torch.
    if name == "Matcher":
        from .matcher import Matcher

        return Matcher
    if name == "FeatureExtractor":
        from .features import FeatureExtractor

        return FeatureExtractor
    if name in ("Features", "MatchResult"):
        from . import types

        return getattr(types, name)
    raise AttributeError(f"module 'mambaglue_ros' has no attribute {name!r}")
