"""The Inf-Streams-Eval judge end to end against a local chat-completions server, faults included.

The server judges by content: the candidate whose text equals the reference wins. Reference
words pick a fault: FAILS (always 500), GARBAGE (an answer that is neither A nor B), HANGS (the
first ask of a question outlasts the client's time-out), FLAKY (the first ask gets a 503).
"""
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from svlm_ros import cli
from svlm_ros.replay.judge import JudgeConfig, parse_vote

from test_quality import record, write_reference, write_run  # noqa: E402  (shared fixtures)
from svlm_ros.replay.reference import RefSegment

PROMPT = re.compile(r"Reference transcript:\n(.*)\n\nCandidate A:\n(.*)\n\nCandidate B:\n(.*)\n\nWhich", re.S)
# window -> (reference text, which run says it; the other says "nothing here at all")
WINDOWS = [("red cone one", "A"), ("blue box two", "B"), ("green ball three", "A"), ("FAILS four", "A"),
           ("GARBAGE five", "A"), ("HANGS six", "A"), ("FLAKY seven", "B")]
WRONG = "nothing here at all"


class JudgeServer:
    def __init__(self):
        self.requests = []  # (reference, candidate A text, candidate B text, authorization)
        self.seen = {}  # request body -> times asked
        self.faults = True
        self.lock = threading.Lock()
        self.release_hang = threading.Event()  # set at close: a hanging answer never comes in time
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = json.loads(body)
                reference, first, second = PROMPT.search(request["messages"][1]["content"]).groups()
                with server.lock:
                    server.requests.append((reference, first, second, self.headers.get("Authorization"),
                                            self.path, request["model"], request["temperature"]))
                    count = server.seen[body] = server.seen.get(body, 0) + 1
                if server.faults and "FAILS" in reference:
                    return self.reply(500, {"error": "internal"})
                if server.faults and "FLAKY" in reference and count == 1:
                    return self.reply(503, {"error": "overloaded"})
                if server.faults and "HANGS" in reference and count == 1:
                    server.release_hang.wait(60)
                    return self.reply(200, answer("A"))
                if server.faults and "GARBAGE" in reference:
                    return self.reply(200, answer("Both are fine, really."))
                return self.reply(200, answer("A" if first == reference else "B"))

            def reply(self, code, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        def answer(content):
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.release_hang.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = JudgeServer()
    yield s
    s.close()


def make_runs(tmp_path):
    segments, a, b = [], [], []
    for w, (text, winner) in enumerate(WINDOWS):
        k = 10 * w + 4
        segments.append(RefSegment(k, k + 1.0, text))
        a.append((k, text if winner == "A" else WRONG))
        b.append((k, text if winner == "B" else WRONG))
    seconds = 10 * len(WINDOWS)
    for name, said in (("a", dict(a)), ("b", dict(b))):
        write_run(tmp_path / name, [record(k, said.get(k, "")) for k in range(seconds)])
    return write_reference(tmp_path / "ref.jsonl", segments)


def judge(tmp_path, server, reference, *extra):
    return cli.main(["judge", str(tmp_path / "a"), str(tmp_path / "b"), "--reference", str(reference),
                     "--endpoint", server.url, "--model", "judge-1", "--out", str(tmp_path / "out"),
                     "--timeout", "5", "--retries", "2", "--backoff", "0.01", "--concurrency", "3",
                     "--api-key-env", "SVLM_TEST_JUDGE_KEY", *extra])


def test_judge_end_to_end_with_faults(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setenv("SVLM_TEST_JUDGE_KEY", "sekret")
    reference = make_runs(tmp_path)
    assert judge(tmp_path, server, reference) == 0
    summary = json.loads((tmp_path / "out" / "judge.json").read_text())
    # A wins windows 0, 2, 5 (HANGS recovers on retry); B wins 1, 6 (FLAKY recovers)
    assert summary["votes_a"] == 6 and summary["votes_b"] == 4 and summary["valid_votes"] == 10
    assert summary["win_rate_a"] == pytest.approx(0.6) and summary["win_rate_b"] == pytest.approx(0.4)
    assert summary["invalid_answers"] == 2  # GARBAGE, asked twice
    assert summary["errors"] == {"http_500": 2}  # FAILS, both asks, after all retries
    assert summary["retried"] == {"http_500": 4, "timeout": 2, "http_503": 2}
    assert summary["windows"] == 7 and summary["questions"] == 14
    assert summary["consistent_windows"] == 5 and summary["first_position_share"] == pytest.approx(0.5)
    assert summary["requests_sent"] == len(server.requests) == 14 + 4 + 2 + 2
    per_window = summary["per_window"]
    assert [w["win_rate_a"] for w in per_window] == [1.0, 0.0, 1.0, None, None, 1.0, 0.0]
    assert per_window[3]["errors"] == 2 and per_window[4]["invalid"] == 2
    # the order swap: every window was shown with A's text first once and with B's text first once
    for text, winner in WINDOWS:
        orders = {(first, second) for reference_text, first, second, *_ in server.requests if reference_text == text}
        good, bad = text, WRONG
        a_text, b_text = (good, bad) if winner == "A" else (bad, good)
        assert orders == {(a_text, b_text), (b_text, a_text)}, text
    assert {r[3] for r in server.requests} == {"Bearer sekret"}
    assert {r[4] for r in server.requests} == {"/v1/chat/completions"}
    assert {(r[5], r[6]) for r in server.requests} == {("judge-1", 0.0)}
    # every answer kept, with its order and the run it voted for
    answers = [json.loads(line) for line in (tmp_path / "out" / "judge_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 14
    assert {(a["window"], a["order"], a["letter"], a["vote"]) for a in answers if a["window"] == 1} == \
        {(1, "AB", "B", "B"), (1, "BA", "A", "B")}
    assert [a["answer"] for a in answers if a["window"] == 4] == ["Both are fine, really."] * 2
    assert "win rate A" in capsys.readouterr().out

    # resume: only the two failed questions are asked again; then nothing at all
    server.faults = False
    asked = len(server.requests)
    assert judge(tmp_path, server, reference) == 0
    assert len(server.requests) - asked == 2
    summary = json.loads((tmp_path / "out" / "judge.json").read_text())
    assert summary["errors"] == {} and summary["cached_answers"] == 12 and summary["votes_a"] == 8
    asked = len(server.requests)
    assert judge(tmp_path, server, reference) == 0
    assert len(server.requests) == asked
    summary = json.loads((tmp_path / "out" / "judge.json").read_text())
    assert summary["cached_answers"] == 14 and summary["requests_sent"] == 0
    assert summary["win_rate_a"] == pytest.approx(8 / 12)


def test_judge_unreachable_endpoint_is_counted_not_fatal(tmp_path, capsys):
    reference = make_runs(tmp_path)
    rc = cli.main(["judge", str(tmp_path / "a"), str(tmp_path / "b"), "--reference", str(reference),
                   "--endpoint", "http://127.0.0.1:9/v1/chat/completions", "--model", "m",
                   "--out", str(tmp_path / "out"), "--retries", "1", "--backoff", "0.01"])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "judge.json").read_text())
    assert summary["errors"] == {"connection": 14} and summary["valid_votes"] == 0 and summary["win_rate_a"] is None
    assert summary["endpoint"] == "http://127.0.0.1:9/v1/chat/completions"


@pytest.mark.parametrize("content, vote", [
    ("A", "A"), (" b\n", "B"), ("**A**", "A"), ("Answer: B", "B"), ("A.", "A"), ("'B'", "B"),
    ("AB", None), ("I pick A", None), ("", None), (None, None), ("A or B", None)])
def test_parse_vote(content, vote):
    assert parse_vote(content) == vote


def test_endpoint_url():
    assert JudgeConfig("http://h/v1", "m").url == "http://h/v1/chat/completions"
    assert JudgeConfig("http://h/v1/chat/completions/", "m").url == "http://h/v1/chat/completions"
