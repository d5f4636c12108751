"""`svlm label`: a teacher at a local OpenAI-compatible server labels synthetic bags.

The server (ThreadingHTTPServer on 127.0.0.1, port 0, in a thread) checks every request's shape
(model, messages, JPEG data URLs of the right count and size per second), answers from the
request itself, and can be told to fail: 429 with Retry-After for the first N calls, 500 always
for chosen seconds, 404 for an unknown model, or hold requests until the client has a given number
in flight. Waits between retries are recorded, never slept; the concurrency check decides by a
condition variable, not by timing.
"""
import base64
import json
import re
import shutil
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # training/ is a top-level folder beside svlm_ros/
    sys.path.insert(0, str(ROOT))

from svlm_ros import chat, cli  # noqa: E402
from svlm_ros.sources.timed_text import load_timed_text  # noqa: E402
from svlm_ros.replay.synth import write_synthetic_bag  # noqa: E402
from training import label as label_module  # noqa: E402
from training.config import LabelConfig  # noqa: E402

HEIGHT, WIDTH, SECONDS = 56, 84, 6
CAMERA = "/cam0/image_raw"
MODEL = "teacher-1"
FRAMES = re.compile(r"^Second (\d+)\.0-(\d+)\.0 s of the video, (\d+) frames in order:$")
HOLD_LIMIT_S = 30  # a safety net only: a held request that waits this long is a test failure


def expected_text(k):
    """What the server's answer for second k becomes in the labels."""
    return "" if k % 3 == 1 else f"Something moves in second {k}."


def server_answer(k):
    if k % 3 == 1:
        return " ..."  # the silence marker
    if k == 5:
        return f"Something moves in second {k}. ..."  # the marker after a sentence is dropped
    return f" Something moves in second {k}.\n"


def clean_lines(seconds=SECONDS, camera=CAMERA):
    return [{"start": float(k), "end": float(k + 1), "text": expected_text(k), "camera": camera}
            for k in range(seconds)]


class TeacherServer:
    def __init__(self):
        self.lock = threading.Condition()
        self.asked = []  # the second of every request, failed ones included
        self.authorization = set()
        self.frames = {}  # second -> its decoded frames (RGB), context -> the context frames
        self.context = {}
        self.problems = []  # request-shape failures (asserted empty by the tests)
        self.fail_429, self.retry_after = 0, "0"
        self.fail_500 = set()
        self.reject = None  # a message: every request is refused with 400 (as a text-only model would)
        self.in_flight = self.max_in_flight = self.started = 0
        self.limit = self.expected = None  # hold(): requests wait until `limit` are in flight
        self.epoch = 0
        self.closing = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    second = server.check(self.path, body)
                except AssertionError as error:
                    with server.lock:
                        server.problems.append(str(error))
                    return self.reply(400, {"error": {"message": f"bad request: {error}"}})
                with server.lock:
                    server.asked.append(second)
                    server.authorization.add(self.headers.get("Authorization"))
                if body["model"] != MODEL:
                    return self.reply(404, {"error": {"message": f"The model `{body['model']}` does not exist.",
                                                      "code": 404}})
                server.arrive()
                try:
                    with server.lock:
                        if server.fail_429 > 0:
                            server.fail_429 -= 1
                            code, payload = 429, {"error": {"message": "slow down"}}
                        elif server.reject:
                            code, payload = 400, {"error": {"message": server.reject}}
                        elif second in server.fail_500:
                            code, payload = 500, {"error": {"message": f"GPU on fire at second {second}"}}
                        else:
                            code, payload = 200, {"choices": [{"index": 0, "message": {
                                "role": "assistant", "content": server_answer(second)}}]}
                finally:
                    server.leave()  # before the answer goes out: the client may send the next one at once
                self.reply(code, payload, {"Retry-After": server.retry_after} if code == 429 else {})

            def reply(self, code, payload, headers=()):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in dict(headers).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def check(self, path, body):
        """The request's second, after checking its shape against what the teacher must be sent."""
        assert path == "/v1/chat/completions", path
        assert body["temperature"] == 0 and body["max_tokens"] == LabelConfig().max_tokens, body
        system, user = body["messages"]
        assert system["role"] == "system" and isinstance(system["content"], str) and system["content"]
        assert user["role"] == "user" and isinstance(user["content"], list)
        groups, current = [], None  # (text, [images]) in order
        for part in user["content"]:
            if part["type"] == "text":
                current = (part["text"], [])
                groups.append(current)
            else:
                assert part["type"] == "image_url" and current is not None, part
                url = part["image_url"]["url"]
                assert url.startswith("data:image/jpeg;base64,"), url[:40]
                image = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8),
                                     cv2.IMREAD_COLOR)
                assert image is not None and image.shape == (HEIGHT, WIDTH, 3), "not a JPEG of the frame's size"
                current[1].append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        match = [FRAMES.match(text) for text, _ in groups]
        where = [n for n, m in enumerate(match) if m]
        assert len(where) == 1, [text for text, _ in groups]
        m = match[where[0]]
        second, count = int(m[1]), int(m[3])
        assert int(m[2]) == second + 1 and count == 2 == len(groups[where[0]][1]), (second, count)
        context = groups[0][1] if where[0] == 1 else []
        assert where[0] == (0 if second == 0 else 1) and len(context) == (0 if second == 0 else 1), second
        assert groups[-1][0].endswith("answer exactly ...") and not groups[-1][1], groups[-1][0]
        with self.lock:
            self.frames.setdefault(second, groups[where[0]][1])
            self.context.setdefault(second, context)
        return second

    def hold(self, limit, expected):
        self.limit, self.expected = limit, expected

    def arrive(self):
        with self.lock:
            self.in_flight += 1
            self.started += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.limit is None:
                return
            mine = self.epoch
            if self.in_flight >= self.limit:
                self.epoch += 1  # releases every request now waiting, this one included
            self.lock.notify_all()
            released = self.lock.wait_for(
                lambda: self.epoch > mine or self.started >= self.expected or self.closing, HOLD_LIMIT_S)
            if not released:
                self.problems.append(f"a request waited {HOLD_LIMIT_S} s with {self.in_flight} in flight")

    def leave(self):
        with self.lock:
            self.in_flight -= 1

    def close(self):
        with self.lock:
            self.closing = True
            self.lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = TeacherServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def waits(monkeypatch):
    """Retries wait through chat._wait (the client the labeller asks through): recorded here instead of slept."""
    recorded = []
    monkeypatch.setattr(chat, "_wait", lambda seconds, stop: recorded.append(seconds))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return recorded


@pytest.fixture(scope="module")
def master_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("label_bags") / "shapes"
    write_synthetic_bag(path, SECONDS, height=HEIGHT, width=WIDTH, seed=3)
    return path


@pytest.fixture
def bag(master_bag, tmp_path):
    """A copy of the bag alone (its reference sidecars stay behind): labels are its only text."""
    copy = tmp_path / "shapes"
    shutil.copytree(master_bag, copy)
    return copy


def label(bag, server, *extra, out=None):
    args = ["label", str(bag), "--endpoint", server.url if hasattr(server, "url") else server, "--model", MODEL,
            "--set", "frames.min_pixels=3136", "--backoff", "0"]
    return cli.main(args + (["--out", str(out)] if out else []) + list(extra))


def read_lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def engine_windows(bag):
    """Each second's frames as the engine samples them (header stamps, WindowAssembler at 2 fps)."""
    from svlm_ros.config import FrameConfig
    from svlm_ros.engine.windows import WindowAssembler
    from svlm_ros.sources.images import to_rgb
    from svlm_ros.sources import bags as bag_io
    from svlm_ros.sources.stamps import to_seconds

    reader = bag_io.open_bag(bag)
    frames = FrameConfig()
    assembler = WindowAssembler(frames.window_seconds, frames.frames_per_window)
    windows = []
    for connection, _, raw in bag_io.messages(reader, bag_io.image_topics(reader, []), reader.start_time,
                                              reader.end_time):
        msg = reader.deserialize(raw, connection.msgtype)
        stamp = to_seconds(msg.header.stamp)
        windows += assembler.add(stamp, to_rgb(msg) if assembler.wants(stamp) else None).windows
    windows.append(assembler.flush())
    reader.close()
    return {w.index: w.frames for w in windows}


def close_to(a, b):
    return np.abs(a.astype(int) - b.astype(int)).mean() < 6  # JPEG at quality 90


# ----- the whole path ------------------------------------------------------------------------------
def test_every_second_is_labelled_from_the_engine_frames_and_build_dataset_reads_the_labels(
        bag, server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    assert label(bag, server) == 0
    out = tmp_path / "shapes.labels.jsonl"  # the default: the sidecar build-dataset looks for
    assert read_lines(out) == clean_lines()
    assert server.problems == [] and sorted(server.asked) == list(range(SECONDS))
    assert server.authorization == {"Bearer env-key"}
    assert "labelled 6 s" in capsys.readouterr().out
    assert not (tmp_path / "shapes.labels.errors.jsonl").exists()
    assert len((tmp_path / "shapes.labels.cache.jsonl").read_text().splitlines()) == SECONDS
    # The teacher saw each second's frames as the engine samples them, after the end of the second before.
    windows = engine_windows(bag)
    assert sorted(server.frames) == sorted(windows) == list(range(SECONDS))
    for k, frames in windows.items():
        assert len(server.frames[k]) == len(frames) == 2
        assert all(close_to(a, b) for a, b in zip(server.frames[k], frames)), k
        if k:
            assert close_to(server.context[k][0], windows[k - 1][-1]), k
    # Readable as a reference, and as the bag's text by build-dataset.
    segments = load_timed_text(str(out))
    assert [(s.start, s.end, s.text, s.camera) for s in segments] == [
        (line["start"], line["end"], line["text"], line["camera"]) for line in clean_lines()]
    data_dir = tmp_path / "dataset"
    assert cli.main(["build-dataset", str(bag), "--out", str(data_dir), "--set", "frames.min_pixels=3136",
                     "--window", "4", "--stride", "2"]) == 0
    from training.dataset import ShardedDataset

    report = json.loads((data_dir / "report.json").read_text())
    assert report["sources"][str(bag)]["text"] == str(out)
    samples = ShardedDataset(data_dir).all_metadata()
    assert [(m["start_s"], m["end_s"]) for m in samples] == [(0.0, 4.0), (2.0, 6.0)]
    for meta in samples:
        assert [s["text"] for s in meta["seconds"]] == [expected_text(s["index"]) for s in meta["seconds"]]


def test_concurrency_limit_is_reached_and_never_exceeded(tmp_path, server, monkeypatch):
    # Each request is held until 3 are in flight at once (or every request has started): a client
    # that never reaches 3 would be caught by the safety net, and any request over the limit that
    # reaches the server by max_in_flight. An overshoot that the release happens to outrun cannot
    # be seen without waiting for it, so the pool's own bound is checked as well.
    pools = []

    class RecordingPool(label_module.ThreadPoolExecutor):
        def __init__(self, max_workers=None, **kwargs):
            pools.append(max_workers)
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(label_module, "ThreadPoolExecutor", RecordingPool)
    seconds = 12
    bag = tmp_path / "long"
    write_synthetic_bag(bag, seconds, height=HEIGHT, width=WIDTH, seed=3)
    server.hold(limit=3, expected=seconds)
    assert label(bag, server, "--concurrency", "3", out=tmp_path / "l.jsonl") == 0
    assert server.problems == []
    assert server.max_in_flight == 3 and server.started == seconds and pools == [3]
    assert [line["start"] for line in read_lines(tmp_path / "l.jsonl")] == list(map(float, range(seconds)))


def test_429s_are_retried_after_their_retry_after(bag, server, tmp_path, waits):
    server.fail_429, server.retry_after = 3, "2"
    assert label(bag, server, "--concurrency", "1", out=tmp_path / "l.jsonl") == 0
    assert read_lines(tmp_path / "l.jsonl") == clean_lines()
    assert server.asked == [0, 0, 0, 0] + list(range(1, SECONDS))
    assert waits == [2.0, 2.0, 2.0]  # --backoff 0: the server's Retry-After alone
    assert server.problems == []


def test_backoff_doubles_honours_retry_after_and_is_capped():
    # The labeller's client is svlm_ros/chat.py's, built from LabelConfig's fields as label_video builds it.
    config = LabelConfig(backoff_s=1.0, max_backoff_s=60.0)
    client = chat.ChatClient("http://127.0.0.1:1/v1", "", timeout_s=config.timeout_s, retries=config.retries,
                             backoff_s=config.backoff_s, max_backoff_s=config.max_backoff_s, stop=threading.Event())
    for attempt, low in ((0, 1.0), (1, 2.0), (3, 8.0)):
        assert low <= client.delay(attempt, 0.0) <= 1.25 * low
    assert client.delay(0, 7.0) == 7.0 and client.delay(10, 0.0) == 60.0 and client.delay(0, 500.0) == 60.0
    assert chat.retry_after_seconds("3") == 3.0 and chat.retry_after_seconds("soon") == 0.0
    assert 100 < chat.retry_after_seconds("Fri, 31 Dec 2100 23:59:59 GMT")
    assert chat.retry_after_seconds("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0


def test_a_second_that_always_fails_is_reported_and_the_others_are_written(bag, server, tmp_path, waits, capsys,
                                                                             caplog):
    server.fail_500 = {2}
    out = tmp_path / "l.jsonl"
    assert label(bag, server, "--retries", "2", out=out) == 1
    assert read_lines(out) == [line for line in clean_lines() if line["start"] != 2.0]
    errors = read_lines(tmp_path / "l.errors.jsonl")
    assert errors == [{"start": 2.0, "end": 3.0, "camera": CAMERA, "status": 500,
                       "error": "GPU on fire at second 2", "attempts": 3}]
    assert server.asked.count(2) == 3 and len(waits) == 2
    assert "1 s FAILED" in capsys.readouterr().out
    failure = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(failure) == 1 and "second 2-3 s" in failure[0] and "HTTP 500: GPU on fire" in failure[0]
    # Fixed on the server: the next run asks for that second alone, and the file ends up in order.
    server.fail_500, server.asked = set(), []
    assert label(bag, server, "--retries", "2", out=out) == 0
    assert server.asked == [2]
    assert read_lines(out) == clean_lines()
    assert not (tmp_path / "l.errors.jsonl").exists()


def test_resume_asks_only_for_the_seconds_not_written(bag, server, tmp_path):
    clean = tmp_path / "clean.jsonl"
    assert label(bag, server, out=clean) == 0
    # A run that fails after 3 seconds (the server breaks down), then one that completes it.
    server.fail_500, server.asked = {3, 4, 5}, []
    out = tmp_path / "l.jsonl"
    assert label(bag, server, "--retries", "0", out=out) == 1
    assert [line["start"] for line in read_lines(out)] == [0.0, 1.0, 2.0]
    server.fail_500, server.asked = set(), []
    assert label(bag, server, "--cache", str(tmp_path / "other_cache.jsonl"), out=out) == 0
    assert sorted(server.asked) == [3, 4, 5]
    assert out.read_bytes() == clean.read_bytes()
    # A killed run: 2 whole lines and a torn third, and no cache; the torn line is asked again.
    lines = clean.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:15])
    server.asked = []
    assert label(bag, server, "--cache", str(tmp_path / "fresh_cache.jsonl"), out=out) == 0
    assert sorted(server.asked) == [2, 3, 4, 5]
    assert out.read_bytes() == clean.read_bytes()


def test_cached_answers_need_no_request_whatever_the_endpoint(bag, server, tmp_path):
    out = tmp_path / "l.jsonl"
    assert label(bag, server, out=out) == 0
    first = out.read_bytes()
    out.unlink()
    other = TeacherServer()  # another address: the cache key does not include the endpoint
    try:
        assert label(bag, other, out=out) == 0
        assert other.asked == [] and out.read_bytes() == first
    finally:
        other.close()
    # A different prompt is a different question.
    config = tmp_path / "label.yaml"
    config.write_text("instruction: Say what is new, or answer exactly {marker}\n")
    out.unlink()
    server.asked = []
    assert label(bag, server, "--config", str(config), out=out) == 0
    assert sorted(server.asked) == list(range(SECONDS))


def test_an_endpoint_that_cannot_serve_any_second_stops_the_run_with_what_to_check(bag, server, tmp_path, capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    out = tmp_path / "l.jsonl"
    assert label(bag, url, out=out) == 2
    message = capsys.readouterr().err
    assert f"cannot reach {url}/chat/completions" in message and "vllm serve" in message
    assert not out.exists()
    assert cli.main(["label", str(bag), "--endpoint", server.url, "--model", "no-such-model", "--out", str(out),
                     "--set", "frames.min_pixels=3136"]) == 2
    message = capsys.readouterr().err
    assert "HTTP 404" in message and "no-such-model" in message and "--model" in message
    server.reject = "At most 1 image(s) may be provided in one request."
    assert label(bag, server, out=out) == 2
    message = capsys.readouterr().err
    assert "refused the first 3 seconds" in message and "At most 1 image" in message
    assert "accepts 3 images per request (vLLM: --limit-mm-per-prompt)" in message
    assert cli.main(["label", str(bag), "--endpoint", "gpu:8000/v1", "--model", MODEL, "--out", str(out)]) == 2
    assert "http(s) URL" in capsys.readouterr().err


def test_one_camera_of_several(tmp_path, server):
    bag = tmp_path / "two"
    write_synthetic_bag(bag, 3, cameras=2, height=HEIGHT, width=WIDTH, seed=5)
    out = tmp_path / "cam1.jsonl"
    assert label(bag, server, "--camera", "/cam1/image_raw", out=out) == 0
    assert read_lines(out) == clean_lines(3, "/cam1/image_raw")
    assert label(bag, server, "--camera", "/nope", out=out) == 2


def test_answers_become_one_line_and_silence_becomes_empty():
    normalise = label_module.normalise_answer
    assert normalise(" ...", " ...") == "" and normalise("...\n", " ...") == "" and normalise("", " ...") == ""
    assert normalise("A red cup appears.\n ...", " ...") == "A red cup appears."
    assert normalise('"A box\nfalls."', " ...") == "A box falls."


def test_the_shipped_config_holds_the_defaults(tmp_path):
    assert label_module.load_label_config(str(ROOT / "training/configs/label.yaml")) == LabelConfig()
    (tmp_path / "bad.yaml").write_text("concurency: 4\n")
    with pytest.raises(ValueError, match="concurency"):
        label_module.load_label_config(str(tmp_path / "bad.yaml"))
