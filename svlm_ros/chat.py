"""One client for OpenAI-compatible chat-completions endpoints: `svlm judge` and `svlm label` ask through it.

What it owns (ROS-free, standard library only):

- **The endpoint rule** (`chat_url`): an http(s) API base such as `http://HOST:8000/v1`, or its
  `/chat/completions` URL, names `BASE/chat/completions`; anything else is refused up front.
- **The request and retry policy** (`ChatClient.ask`), openai-python's: connection failures,
  time-outs and HTTP 408, 409, 425, 429 and 5xx are retried `retries` times with exponential
  backoff (`backoff_s`, doubling, plus up to 25% jitter), waiting at least the server's
  `retry-after-ms` or `Retry-After` (seconds or an HTTP date) and at most `max_backoff_s`; a
  server's `x-should-retry: true|false` overrides the status rule. Other client errors (400,
  413, 422) are not retried: asking again cannot help.
- **The wait between retries**: on a stop Event, so a run that stops (Ctrl-C, a fatal error)
  ends a long Retry-After at once instead of sleeping it out.
- **Errors that name the endpoint and what to do**: an answer the caller cannot recover from by
  asking again, whatever it asks (the endpoint cannot be reached or does not speak
  chat-completions before anything has worked, or it answers 401, 403 or 404), is marked
  `fatal` with a message saying what to check; callers raise it as `EndpointError` (the
  labeller) or count it (the judge). Every failure also has a short `kind` for tallies
  (`http_500`, `timeout`, `connection`, `bad_response`).
- **The answer cache** (`AnswerCache`): one JSON line `{"key", "answer"}` per answer, appended
  and flushed as it arrives, keyed by the SHA-256 of the request body (`request_key`: model,
  messages, sampling; not the endpoint's address). A last line torn by a killed run is repaired
  on opening (`repair_tail`: completed when it is whole JSON, cut off otherwise), so the next
  answer starts a line of its own instead of being glued to the torn one and lost.

Why not the `openai` package: its retry wait is an uninterruptible `time.sleep`, it counts and
classifies nothing per attempt (the judge tallies every retried failure by kind), so both would
have to be rebuilt around it with its own retries off, and it would add httpx and pydantic to
the dependencies for one POST. What it would give, connection keep-alive, is not worth that at
the request rates here (a local server answers a connection in well under a millisecond).
"""
from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

CHAT_PATH = "/chat/completions"
RETRY_STATUSES = (408, 409, 425, 429)  # and every 5xx
FATAL_STATUSES = (401, 403, 404)  # a wrong key, path or model: every request would fail the same way


class EndpointError(RuntimeError):
    """The endpoint cannot serve any request (unreachable, not chat-completions, 401/403/404)."""


# ----- the endpoint ------------------------------------------------------------------------------------
def chat_url(endpoint: str) -> str:
    """The chat-completions URL of an API base (`http://HOST:8000/v1`) or of that URL itself."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"--endpoint {endpoint!r} is not an http(s) URL; give the API base, such as "
                         "http://HOST:8000/v1")
    return endpoint if endpoint.endswith(CHAT_PATH) else endpoint + CHAT_PATH


def api_base(endpoint: str) -> str:
    """The API base of an endpoint (where `/models` lists what the server serves)."""
    return chat_url(endpoint)[:-len(CHAT_PATH)]


# ----- what the server said -------------------------------------------------------------------------------
def retry_after_seconds(value: Optional[str], now: Optional[float] = None) -> float:
    """A Retry-After header: delta seconds or an HTTP date (against `now`, default the clock); 0 when
    absent, past or unreadable."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    except (TypeError, ValueError, OverflowError, IndexError):
        return 0.0


def _retry_after(headers) -> float:
    """openai-python's reading: `retry-after-ms` first, then `Retry-After`."""
    if headers is None:
        return 0.0
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    return retry_after_seconds(headers.get("Retry-After"))


def server_message(raw: bytes) -> str:
    """The error text of an OpenAI-style ({"error": {"message"}}), FastAPI ({"detail"}) or plain answer."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("detail", payload.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)[:300]
    return text[:300]


# ----- the client -------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One question's fate, after every attempt."""

    answer: Optional[str] = None  # the message content on success
    status: Optional[int] = None  # the last HTTP status of a failure (None: no HTTP answer)
    kind: Optional[str] = None  # the last failure for tallies: http_<status>, timeout, connection, bad_response
    error: str = ""  # the last failure for people: the server's message, or what to check when fatal
    attempts: int = 0
    retried: List[str] = field(default_factory=list)  # the kind of every failure that was asked again
    fatal: bool = False  # every request would fail the same way: the caller stops (or counts) it
    stopped: bool = False  # the stop event ended the retries


def _wait(seconds: float, stop: threading.Event) -> None:
    """The wait between retries; the stop event ends it at once (tests replace this to record waits)."""
    stop.wait(seconds)


class ChatClient:
    """POSTs chat-completions requests with the module's retry policy; thread-safe; counts what it sends.

    `key_hint` is what a 401/403 message tells the user to check (the caller's flag for the key)."""

    def __init__(self, endpoint: str, api_key: str = "", *, timeout_s: float = 60.0, retries: int = 3,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, stop: Optional[threading.Event] = None,
                 key_hint: str = "the API key"):
        if retries < 0 or timeout_s <= 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ValueError(f"need retries >= 0, timeout > 0, backoff >= 0 and max backoff >= 0, got {retries}, "
                             f"{timeout_s}, {backoff_s}, {max_backoff_s}")
        self.url, self.base = chat_url(endpoint), api_base(endpoint)
        self.timeout_s, self.retries = timeout_s, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.stop = stop if stop is not None else threading.Event()
        self.key_hint = key_hint
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.reached = threading.Event()  # some request got an HTTP answer: the URL is right
        self.answered = False  # some request got a chat-completions answer
        self.requests_sent = 0
        self._lock = threading.Lock()

    def delay(self, attempt: int, retry_after: float) -> float:
        """The wait before retry `attempt + 1`: the doubling backoff with jitter, at least the server's
        Retry-After, at most max_backoff_s."""
        base = self.backoff_s * 2 ** attempt
        return min(max(base * (1 + 0.25 * random.random()), retry_after), self.max_backoff_s)

    def ask(self, body: Dict) -> Outcome:
        """Ask until an answer, a failure not worth asking again, the last retry, or the stop event."""
        data = json.dumps(body).encode()
        outcome = Outcome()
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                outcome.stopped = True
                outcome.kind, outcome.error = outcome.kind or "stopped", outcome.error or "the run stopped"
                return outcome
            outcome.attempts += 1
            with self._lock:
                self.requests_sent += 1
            retry, retry_after = self._attempt(data, body, outcome)
            if not retry or attempt == self.retries:
                return outcome
            outcome.retried.append(outcome.kind)
            wait = self.delay(attempt, retry_after)
            log.info("%s: %s (attempt %d of %d); retrying in %.1f s", self.url, outcome.error if outcome.status is None
                     else f"HTTP {outcome.status}: {outcome.error}", attempt + 1, self.retries + 1, wait)
            _wait(wait, self.stop)
        return outcome

    def _attempt(self, data: bytes, body: Dict, outcome: Outcome) -> Tuple[bool, float]:
        """One POST; fills `outcome` with its answer or failure; returns (ask again?, Retry-After)."""
        outcome.status = None
        try:
            request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw, outcome.status = response.read(), response.status
            try:
                content = json.loads(raw)["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                outcome.kind = "bad_response"  # a proxy's page, a truncated body, another API
                if not self.reached.is_set():
                    outcome.fatal = True
                    outcome.error = (f"{self.url} answered, but not with OpenAI chat-completions JSON ({raw[:120]!r}); "
                                     "is --endpoint the API base of an OpenAI-compatible server, such as "
                                     "http://HOST:8000/v1?")
                    return False, 0.0
                outcome.error = f"the answer is not chat-completions JSON: {raw[:200]!r}"
                return True, 0.0
            self.reached.set()
            self.answered = True
            outcome.answer, outcome.kind, outcome.error = ("" if content is None else str(content)), None, ""
            return False, 0.0
        except urllib.error.HTTPError as error:
            self.reached.set()
            try:
                raw = error.read() or b""
            except (OSError, http.client.HTTPException):
                raw = b""
            status = outcome.status = error.code
            outcome.kind, outcome.error = f"http_{status}", server_message(raw)
            if status in FATAL_STATUSES:
                outcome.fatal = True
                hint = (f"check {self.key_hint}" if status in (401, 403) else
                        f"check that --endpoint is the API base (such as http://HOST:8000/v1) and that the server "
                        f"serves --model {body.get('model')!r} (`curl {self.base}/models`)")
                outcome.error = f"{self.url} answered HTTP {status}: {outcome.error}; {hint}"
                return False, 0.0
            should = (error.headers.get("x-should-retry") or "").lower() if error.headers else ""
            retry = status >= 500 or status in RETRY_STATUSES
            if should in ("true", "false"):
                retry = should == "true"  # the server knows best (openai-python obeys it too)
            return retry, _retry_after(error.headers)
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                outcome.kind, outcome.error = "timeout", f"no answer within {self.timeout_s:g} s"
            elif not self.reached.is_set():
                return self._unreachable(reason, outcome)
            else:
                outcome.kind, outcome.error = "connection", f"connection failed: {reason}"
        except (TimeoutError, socket.timeout):
            outcome.kind, outcome.error = "timeout", f"no answer within {self.timeout_s:g} s"
        except ConnectionRefusedError as error:
            if not self.reached.is_set():
                return self._unreachable(error, outcome)
            outcome.kind, outcome.error = "connection", f"connection failed: {error}"
        except (ConnectionError, http.client.HTTPException, OSError) as error:
            outcome.kind, outcome.error = "connection", f"connection failed: {type(error).__name__}: {error}"
        return True, 0.0

    def _unreachable(self, reason, outcome: Outcome) -> Tuple[bool, float]:
        outcome.fatal, outcome.kind = True, "connection"
        outcome.error = (f"cannot reach {self.url}: {reason}. Is the server running and listening there? Start it "
                         f"(for example `vllm serve MODEL --port 8000`), wait until it answers "
                         f"`curl {self.base}/models`, and pass --endpoint its API base, such as http://HOST:8000/v1")
        return False, 0.0


# ----- the answer cache ------------------------------------------------------------------------------------------
def request_key(body: Dict) -> str:
    """The cache key of a request: the SHA-256 of its body, keys sorted (the endpoint's address is not in it)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def repair_tail(path: Path) -> None:
    """Make a JSON-lines file end with a whole line, so appending starts a fresh one: a last line
    without its newline (a run killed while writing it) gets the newline when it is whole JSON and
    is cut off otherwise."""
    if not path.is_file():
        return
    with path.open("r+b") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        start, position = 0, size
        while position > 0:  # back to the last newline, a block at a time: the file may be large
            step = min(1 << 16, position)
            position -= step
            handle.seek(position)
            found = handle.read(step).rfind(b"\n")
            if found >= 0:
                start = position + found + 1
                break
        handle.seek(start)
        tail = handle.read()
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:
            whole = False
        if whole:
            handle.seek(size)
            handle.write(b"\n")
            log.info("%s: ended its last line, written whole by an interrupted run", path)
        else:
            handle.truncate(start)
            log.warning("%s: dropped an incomplete last line (%d bytes) left by an interrupted run", path,
                        size - start)


class AnswerCache:
    """Answers the server gave, one JSON line each (`{"key", "answer"}`), appended and flushed as they arrive."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.answers: Dict[str, str] = {}
        repair_tail(self.path)
        if self.path.is_file():
            skipped = 0
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    self.answers[item["key"]] = str(item["answer"])
                except (ValueError, KeyError, TypeError):
                    skipped += 1  # not one of ours: that question is asked again
            if skipped:
                log.warning("%s: %d lines are not cached answers and were skipped", self.path, skipped)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.answers)

    def get(self, key: str) -> Optional[str]:
        return self.answers.get(key)

    def put(self, key: str, answer: str) -> None:
        line = json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n"
        with self._lock:
            self.answers[key] = answer
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
