"""mambaglue_ros: MambaGlue feature matching and relative pose, with a thin ROS 2 node on top."""
import pkgutil

# The generated message module (mambaglue_ros.msg) is built by rosidl into site-packages, not
# into this source tree: let it join this package (see README "Messages").
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
