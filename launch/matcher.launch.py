"""Start the MambaGlue matcher node.

    ros2 launch mambaglue_ros matcher.launch.py image:=/camera/image_raw camera_info:=/camera/camera_info
    ros2 launch mambaglue_ros matcher.launch.py image:=/camera/image_raw transport:=compressed
    ros2 launch mambaglue_ros matcher.launch.py params_file:=/my/stereo.yaml lifecycle:=true
    ros2 launch mambaglue_ros matcher.launch.py lifecycle:=true autostart:=false   # a lifecycle manager brings it up
    ros2 launch mambaglue_ros matcher.launch.py mode:=stereo \
        left_image:=/stereo/left/image_rect right_image:=/stereo/right/image_rect \
        left_camera_info:=/stereo/left/camera_info right_camera_info:=/stereo/right/camera_info

The decisions (default params file per mode, remappings, argument checks) live in
mambaglue_ros/ros/launch_config.py, plain Python with unit tests; this file only reads the
launch arguments inside an OpaqueFunction, where their values are known.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

# Importing mambaglue_ros sets OMP_WAIT_POLICY and THP_MEM_ALLOC_ENABLE for its own process, before torch loads. launch
# passes this process's environment to every process it starts, so it is put back as it was: the node sets them for
# itself, and the other nodes of a launch that includes this file keep the user's environment.
_environment = dict(os.environ)
from mambaglue_ros.ros import launch_config  # noqa: E402
for _name in set(os.environ) - set(_environment):
    del os.environ[_name]
os.environ.update(_environment)

# launch arguments that remap one of the node's input topics (an empty value keeps the default)
TOPIC_ARGUMENTS = ("image", "camera_info", "left_image", "right_image",
                   "left_camera_info", "right_camera_info")


def _launch_setup(context, *args, **kwargs):
    def value(name):
        return LaunchConfiguration(name).perform(context)

    node_kwargs = launch_config.node_arguments(
        mode=value("mode"),
        params_file=value("params_file"),
        namespace=value("namespace"),
        use_sim_time=value("use_sim_time"),
        remaps={name: value(name) for name in TOPIC_ARGUMENTS},
        share_dir=get_package_share_directory("mambaglue_ros"),
        log_level=value("log_level"),
        transport=value("transport"),
        lifecycle=value("lifecycle"),
    )
    if not launch_config.parse_bool(value("lifecycle")):
        return [Node(package="mambaglue_ros", executable="matcher_node",
                     output="screen", emulate_tty=True, **node_kwargs)]
    # the managed node, named so that launch's lifecycle events (and a lifecycle manager) can address it
    node = LifecycleNode(package="mambaglue_ros", executable="matcher_node", name=launch_config.NODE_NAME,
                         output="screen", emulate_tty=True, **node_kwargs)
    if not launch_config.parse_bool(value("autostart")):
        return [node]

    def transition(transition_id):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))

    # configure at start, activate once that configure has left it inactive (a configure that fails leaves it
    # unconfigured). From "configuring" only: a later deactivate (or a refused activate) also ends in "inactive", and
    # must leave the node there instead of activating it again.
    return [node,
            RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, start_state="configuring",
                                                   goal_state="inactive",
                                                   entities=[transition(Transition.TRANSITION_ACTIVATE)])),
            transition(Transition.TRANSITION_CONFIGURE)]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("mode", default_value="",
                              description="mono (temporal pairs) or stereo (left/right pairs: rectified, or raw with "
                                          "stereo_rectify: true in the params file); "
                                          "empty = the params file's mode (mono without a params file)"),
        DeclareLaunchArgument("params_file", default_value="",
                              description="parameters YAML; empty = config/matcher.yaml (mono) "
                                          "or config/stereo.yaml (stereo) of this package"),
        DeclareLaunchArgument("transport", default_value="",
                              description="raw (sensor_msgs/Image) or compressed (<image>/compressed); "
                                          "empty = the params file's transport"),
        DeclareLaunchArgument("lifecycle", default_value="false",
                              description="start the lifecycle (managed) node, named mambaglue_matcher"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="with lifecycle:=true: configure and activate it at launch; false: leave "
                                          "it unconfigured for a lifecycle manager (Nav2) or `ros2 lifecycle set`"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="use /clock (bag playback with --clock); empty = the params file's "
                                          "value (false without one)"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="debug, info, warn, error or fatal"),
        DeclareLaunchArgument("image", default_value="",
                              description="mono: image topic (also remaps image/compressed)"),
        DeclareLaunchArgument("camera_info", default_value="", description="mono: camera_info topic"),
        DeclareLaunchArgument("left_image", default_value="",
                              description="stereo: left image (image_rect; image_raw with stereo_rectify: true)"),
        DeclareLaunchArgument("right_image", default_value="",
                              description="stereo: right image (image_rect; image_raw with stereo_rectify: true)"),
        DeclareLaunchArgument("left_camera_info", default_value="", description="stereo: left camera_info"),
        DeclareLaunchArgument("right_camera_info", default_value="", description="stereo: right camera_info"),
        OpaqueFunction(function=_launch_setup),
    ])
