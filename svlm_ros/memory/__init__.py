"""Long-term memory: what the robot saw, where and when, searchable for days (ROS-free).

- `store.py`: the entries of the SQLite file (entries merged into runs, distinct texts with their
  embeddings, the inverted file's training, retention) and recall under filters.
- `records.py`: what goes in and comes out (Entry, Hit, Pose); `errors.py`: the StoreError family
  and what to do about each; `schema.py`: the file's layout; `lock.py`: the one-writer lock;
  `sqlite_file.py`: a connection with its one transaction, shared by entries and summaries.
- `vectors.py`: the embedder, int8 vectors and k-means cells; `filters.py`: a recall's filters as SQL.
- `ranking.py`: the texts held in memory (word postings, int8 vectors, k-means cells) and the
  ranking: keyword and meaning evidence fused by score; nothing when nothing matches.
- `writer.py`: keeps writes off the real-time path (a bounded queue and one thread).
- `recorder.py`: the writer, the summaries and the reading connections of one file, as the node
  and a replay both fill it.
- `pose.py`: the robot's pose over time, matched to each window.
- `summaries.py`: summaries in tiers (minutes, hour, day), planned from window stamps, written
  by the model when it is idle; the seed text of a restarted stream.
- `timewords.py`: "an hour ago", "between 10:00 and 10:15" ... as a range of sensor time.
- `questions.py`: what a question about the past is given from memory, as timed lines.
- `cli.py`: `svlm recall`.
The node's side (services, pose topics, tf, diagnostics) is `svlm_ros/node/memory.py`.
"""
