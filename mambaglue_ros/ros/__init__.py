"""ROS 2 glue: message conversion, synchronisation, parameters and launch helpers (the only rclpy users)."""
from ..pipeline import quiet_openmp

# Before anything imports torch (node.py's imports do): OpenMP threads must not spin (see quiet_openmp).
quiet_openmp()
