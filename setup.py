"""pip/venv install of the Python side (the ROS/colcon build uses CMakeLists.txt)."""
from setuptools import find_packages, setup

setup(
    name="mambaglue_ros",
    version="0.1.0",
    description="MambaGlue feature matching and relative pose for ROS 2",
    packages=find_packages(include=["mambaglue_ros", "mambaglue_ros.*"]),
    package_data={"mambaglue_ros": ["weights/*.pt", "weights/*.pt.xz", "weights/*.md", "models/*.cpp"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.1", "numpy", "opencv-python-headless<5", "kornia>=0.8"],
    entry_points={
        "console_scripts": [
            "mambaglue = mambaglue_ros.cli:main",
            "matcher_node = mambaglue_ros.ros.node:main",
            "multi_camera_node = mambaglue_ros.ros.multi_camera:main",
        ]
    },
)
