"""Where every path takes its input: bags, timed text, stamps, video files and images, ROS-free.

This package owns reading what a robot recorded, for the replay, the training data, the memory
and the node alike, so that each reads it the same way. It sits below them all and imports
none of them, nor rclpy: only the engine's window assembly (for the frame intake), numpy,
OpenCV and rosbags.

- `bags.py`: opening a bag, its topics, the names of the files around a recording (bag
  suffixes, sidecars, run names), and reading camera messages lazily: the stamp is peeked from
  the serialized header, the message deserialized only when a frame is wanted.
- `messages.py`: message types registered from this package's own .msg text (no ROS install).
- `timed_text.py`: timed-text formats (JSONL, WebVTT, SRT, a text topic in a bag), word timing,
  and the one rule that gives a word its second (metrics, report captions and training text).
- `stamps.py`: stamps and float seconds, both ways.
- `videos.py`: frames from video files and folders of images.
- `images.py`: sensor_msgs Image / CompressedImage to RGB frames, with the cause of a bad one.
- `intake.py`: one camera's frames in, the engine's windows out: stamp checks, lazy conversion,
  counters and warnings, the same for the node, a replay and the training data.
"""
