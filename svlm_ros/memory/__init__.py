"""Long-term memory: what the robot saw, where and when, searchable for days.

`store.py` owns the SQLite file (entries, keyword index, embeddings of distinct texts, retention
and ranked recall); `writer.py` keeps writes off the real-time path. The node's services, pose
matching and summaries build on these (issue 13).
"""
