"""The ROS 2 adapter: a lifecycle node over the ROS-free scheduler and engine."""
