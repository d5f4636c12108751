"""Overlapped-chunk SFT of the streaming model on the robot's own logs (issue 12).

dataset.py cuts bags and timed text into windows and writes sharded samples; samples.py turns a
sample into token ids, positions and labels through the engine's own sequence code; train.py
fine-tunes; build_dataset.py is the command line of the dataset builder. Every default lives in
config.py.
"""
