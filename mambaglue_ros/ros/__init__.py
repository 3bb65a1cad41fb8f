"""ROS 2 glue: message conversion, synchronisation, parameters and launch helpers (the only rclpy users)."""
