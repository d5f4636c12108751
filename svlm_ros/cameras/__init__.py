"""Many cameras, one model: the ROS-free core the node and `svlm replay` share.

`scheduler.py` owns each camera's stream (its frame intake from svlm_ros/sources, its queue of
windows, its row of the engine's StreamBatch) and the worker that describes them in batched
steps, questions first. The node (svlm_ros/node, rclpy) and the replay tool (svlm_ros/replay)
only feed it frames and take its results, so a bag is described as the robot would describe it.
"""
