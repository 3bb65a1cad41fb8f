"""mambaglue_ros: MambaGlue feature matching and relative pose, with a thin ROS 2 node on top."""
import pkgutil

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
