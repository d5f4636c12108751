"""The Inf-Streams-Eval judge end to end against a local chat-completions server, faults included.

The server judges by content: the candidate whose text equals the reference wins. Reference
words pick a fault: FAILS (always 500), GARBAGE (an answer that is neither A nor B), DROPS (the
first ask of a question has its connection closed without an answer), FLAKY (the first ask gets
a 503). Every fault is decided by the request count, never by time: the client's time-out is the
default (60 s), which no answer of this server comes near. Time-outs, Retry-After and the
interrupted wait are tested against the client itself with servers that answer by script.
"""
import argparse
import email.utils
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from svlm_ros import chat, cli
from svlm_ros.replay import judge as judge_module
from svlm_ros.replay.judge import JudgeConfig, parse_vote
from svlm_ros.sources.timed_text import RefSegment

from test_quality import record, write_reference, write_run  # noqa: E402  (shared fixtures)

PROMPT = re.compile(r"Reference transcript:\n(.*)\n\nCandidate A:\n(.*)\n\nCandidate B:\n(.*)\n\nWhich", re.S)
# window -> (reference text, which run says it; the other says "nothing here at all")
WINDOWS = [("red cone one", "A"), ("blue box two", "B"), ("green ball three", "A"), ("FAILS four", "A"),
           ("GARBAGE five", "A"), ("DROPS six", "A"), ("FLAKY seven", "B")]
WRONG = "nothing here at all"


class JudgeServer:
    def __init__(self):
        self.requests = []  # (reference, candidate A text, candidate B text, authorization)
        self.seen = {}  # request body -> times asked
        self.faults = True
        self.lock = threading.Lock()
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
                if server.faults and "DROPS" in reference and count == 1:
                    self.close_connection = True  # the request was read whole: the client sees no answer
                    return None
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
                    pass  # the client left

        def answer(content):
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
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
                     "--retries", "2", "--backoff", "0.01", "--concurrency", "3",
                     "--api-key-env", "SVLM_TEST_JUDGE_KEY", *extra])


def test_judge_end_to_end_with_faults(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setenv("SVLM_TEST_JUDGE_KEY", "sekret")
    reference = make_runs(tmp_path)
    assert judge(tmp_path, server, reference) == 0
    summary = json.loads((tmp_path / "out" / "judge.json").read_text())
    # A wins windows 0, 2, 5 (DROPS recovers on retry); B wins 1, 6 (FLAKY recovers)
    assert summary["votes_a"] == 6 and summary["votes_b"] == 4 and summary["valid_votes"] == 10
    assert summary["win_rate_a"] == pytest.approx(0.6) and summary["win_rate_b"] == pytest.approx(0.4)
    assert summary["invalid_answers"] == 2  # GARBAGE, asked twice
    assert summary["errors"] == {"http_500": 2}  # FAILS, both asks, after all retries
    assert summary["retried"] == {"http_500": 4, "connection": 2, "http_503": 2}
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


def test_judge_unreachable_endpoint_is_counted_not_fatal(tmp_path, capsys, caplog):
    reference = make_runs(tmp_path)
    rc = cli.main(["judge", str(tmp_path / "a"), str(tmp_path / "b"), "--reference", str(reference),
                   "--endpoint", "http://127.0.0.1:9/v1/chat/completions", "--model", "m",
                   "--out", str(tmp_path / "out"), "--retries", "1", "--backoff", "0.01"])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "judge.json").read_text())
    assert summary["errors"] == {"connection": 14} and summary["valid_votes"] == 0 and summary["win_rate_a"] is None
    assert summary["endpoint"] == "http://127.0.0.1:9/v1/chat/completions"
    # what to check is said once, not once per question
    told = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(told) == 1 and "cannot reach http://127.0.0.1:9/v1/chat/completions" in told[0], told


@pytest.mark.parametrize("content, vote", [
    ("A", "A"), (" b\n", "B"), ("**A**", "A"), ("Answer: B", "B"), ("A.", "A"), ("'B'", "B"),
    ("AB", None), ("I pick A", None), ("", None), (None, None), ("A or B", None)])
def test_parse_vote(content, vote):
    assert parse_vote(content) == vote


def test_endpoint_url():
    assert JudgeConfig("http://h/v1", "m").url == "http://h/v1/chat/completions"
    assert JudgeConfig("http://h/v1/chat/completions/", "m").url == "http://h/v1/chat/completions"


def test_the_command_line_defaults_are_judge_config_s():
    parser = argparse.ArgumentParser()
    judge_module.add_client_arguments(parser)
    args = parser.parse_args(["--endpoint", "http://h/v1", "--model", "m"])
    assert judge_module.config_from_args(args) == JudgeConfig("http://h/v1", "m")
    args = parser.parse_args(["--endpoint", "http://h/v1", "--model", "m", "--timeout", "9", "--retries", "0",
                              "--backoff", "2", "--concurrency", "7", "--max-chars", "10", "--api-key-env", "K"])
    assert judge_module.config_from_args(args) == JudgeConfig("http://h/v1", "m", "K", 7, 9.0, 0, 2.0, 10)


def test_a_torn_last_cache_line_is_repaired_and_the_answer_after_it_is_found(tmp_path, server):
    server.faults = False
    reference = make_runs(tmp_path)
    assert judge(tmp_path, server, reference) == 0
    cache = tmp_path / "out" / "judge_cache.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    assert len(lines) == 14 and len(server.requests) == 14
    # Killed while writing the last answer: its line is cut short. That question is asked again,
    # and its answer goes on a line of its own (not glued to the torn one), so the next run finds it.
    cache.write_text("".join(lines[:13]) + lines[13][:30])
    assert judge(tmp_path, server, reference) == 0
    assert len(server.requests) == 15
    assert judge(tmp_path, server, reference) == 0
    assert len(server.requests) == 15
    summary = json.loads((tmp_path / "out" / "judge.json").read_text())
    assert summary["cached_answers"] == 14 and summary["requests_sent"] == 0
    assert all(json.loads(line)["key"] for line in cache.read_text().splitlines())
    # Killed between a whole answer and its newline: the answer is kept, the line ended.
    cache.write_text("".join(lines).rstrip("\n"))
    assert judge(tmp_path, server, reference) == 0
    assert len(server.requests) == 15
    assert cache.read_text() == "".join(lines)


class ScriptServer:
    """Answers the n-th request with script[n] (the last entry again after the end): (status,
    headers) for an error, "hold" to keep the request unanswered until close, or a content string."""

    def __init__(self, script):
        self.script, self.count = list(script), 0
        self.arrived = threading.Condition()
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                with server.arrived:
                    step = server.script[min(server.count, len(server.script) - 1)]
                    server.count += 1
                    server.arrived.notify_all()
                if step == "hold":
                    server.closing.wait()
                    return
                if isinstance(step, str):
                    code, headers = 200, {}
                    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": step}}]}
                else:
                    (code, headers), payload = step, {"error": {"message": f"scripted {step[0]}"}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def wait_for(self, count):
        """Until `count` requests have arrived (60 s is a safety net, not a measurement)."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: self.count >= count, 60), self.count
        return self.count

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def script_server():
    servers = []

    def start(*script):
        servers.append(ScriptServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


BODY = {"model": "m", "messages": [{"role": "user", "content": "A or B?"}], "max_tokens": 1, "temperature": 0}


def test_an_unanswered_request_times_out_and_is_asked_again(script_server):
    # The server never answers, so every attempt ends in the client's time-out however loaded the
    # machine is: the count of attempts is exact.
    server = script_server("hold")
    client = chat.ChatClient(server.url, timeout_s=0.5, retries=2, backoff_s=0.0)
    outcome = client.ask(BODY)
    assert outcome.answer is None and outcome.kind == "timeout" and not outcome.fatal
    assert outcome.retried == ["timeout", "timeout"] and outcome.attempts == 3 == client.requests_sent
    assert "no answer within 0.5 s" in outcome.error
    assert server.wait_for(3) == 3


def test_retry_after_as_an_http_date_or_milliseconds_is_waited(script_server, monkeypatch):
    waits = []
    monkeypatch.setattr(chat, "_wait", lambda seconds, stop: waits.append(seconds))
    date = "Fri, 31 Dec 2100 23:59:59 GMT"
    when = email.utils.parsedate_to_datetime(date).timestamp()
    assert chat.retry_after_seconds(date, now=when - 42) == 42.0
    assert chat.retry_after_seconds(date, now=when + 1) == 0.0  # a date gone by: no wait
    # --backoff 0: the wait is the server's alone (the date is decades ahead: capped at max_backoff_s)
    server = script_server((429, {"Retry-After": date}), (503, {"retry-after-ms": "1500"}), "B")
    client = chat.ChatClient(server.url, retries=3, backoff_s=0.0, max_backoff_s=60.0)
    outcome = client.ask(BODY)
    assert outcome.answer == "B" and outcome.retried == ["http_429", "http_503"] and outcome.attempts == 3
    assert waits == [60.0, 1.5] and server.count == 3


def test_the_stop_event_ends_a_long_retry_after_at_once(script_server, monkeypatch):
    # An hour's Retry-After: the ask ends when the stop event is set, with no further request.
    entered, waits = threading.Event(), []
    real_wait = chat._wait

    def wait(seconds, stop):
        waits.append(seconds)
        entered.set()
        real_wait(seconds, stop)  # the client's own wait, on its stop event

    monkeypatch.setattr(chat, "_wait", wait)
    server = script_server((429, {"Retry-After": "3600"}))
    stop = threading.Event()
    client = chat.ChatClient(server.url, retries=3, backoff_s=0.0, max_backoff_s=3600.0, stop=stop)
    outcomes = []
    done = threading.Event()
    asker = threading.Thread(target=lambda: (outcomes.append(client.ask(BODY)), done.set()), daemon=True)
    asker.start()
    assert entered.wait(60)  # safety nets, not measurements: the events decide
    stop.set()
    assert done.wait(60), "the wait did not end on the stop event"
    (outcome,) = outcomes
    assert outcome.stopped and outcome.answer is None and outcome.kind == "http_429"
    assert outcome.attempts == 1 and outcome.retried == ["http_429"] and server.count == 1 and waits == [3600.0]


def test_a_fatal_answer_names_the_endpoint_and_what_to_check(script_server):
    server = script_server((401, {}))
    outcome = chat.ChatClient(server.url, key_hint="$K (--api-key-env)").ask(BODY)
    assert outcome.fatal and outcome.kind == "http_401" and outcome.attempts == 1
    assert f"{server.url}/chat/completions answered HTTP 401: scripted 401; check $K (--api-key-env)" == outcome.error
    with pytest.raises(ValueError, match="http\\(s\\) URL"):
        chat.ChatClient("gpu:8000/v1")
