"""`svlm judge`: StreamingVLM's Inf-Streams-Eval pairwise LLM judge over time windows.

This module owns the judge protocol, the HTTP client for an OpenAI-compatible chat endpoint,
and the answer cache. The protocol, as StreamingVLM's evaluation runs it:

- One question per evaluation window that has reference text (a window with nothing in the
  reference gives the judge nothing to check fidelity against): the reference transcript and
  both candidates' text of that window in one prompt, each cut to `max_chars` characters,
  temperature 0, and a system prompt that asks for a strict verdict on fidelity to the
  reference, answered with exactly one letter.
- Every window is asked twice, run A shown first as "A" and then run B shown first as "A", so
  position bias cancels out; each answer is mapped back to the run it names.
- Win rate of A = votes for A / all valid votes (votes for A or B), per window and overall.
  Answers that are neither A nor B (after trimming spaces, quotes, `*` and a final period, and
  an optional "Answer:" label) are counted as invalid, not as votes. Server errors, time-outs
  and connection failures are retried with exponential backoff (plus jitter, and at least the
  server's Retry-After) and, when the retries run out, counted by kind; none of them stops the
  run. Other client errors (400, 401, 404) are not retried: asking again cannot help.

Every answer, cached or fresh, is written to `judge_answers.jsonl`. The cache
(`judge_cache.jsonl` by default, one line per answer the server gave, valid or not) is keyed by
the SHA-256 of the request body (model, messages, temperature, max_tokens), not the endpoint's
address, so the same question to the same model is never asked twice and an interrupted run
resumes where it stopped; failed asks are not cached and are asked again next time.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..progress import progress
from .quality import Window

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a strict, impartial judge of live video commentary. You are given the reference transcript of a "
    "stretch of video and two candidate commentaries of the same stretch, labelled A and B. Decide which "
    "candidate is more faithful to the video as the reference describes it: the same events, objects, order "
    "and timing, and nothing invented. Ignore style and length except where they change what is described. "
    "Answer with exactly one letter: A or B.")
EMPTY_TEXT = "(no commentary)"
_VOTE = re.compile(r"^\W*(?:answer\s*[:\-]\s*)?\W*([AB])\W*$", re.IGNORECASE)


@dataclass
class JudgeConfig:
    endpoint: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"  # read at run time; no key is sent when it is unset
    concurrency: int = 4  # requests in flight; endpoints rate-limit, 4 is polite and still quick
    timeout_s: float = 60.0  # per request; a judge answering one letter needs far less
    retries: int = 3  # after the first attempt, for 5xx, 429, time-outs and connection errors
    backoff_s: float = 1.0  # first retry waits about this long, doubling each time
    max_chars: int = 4000  # per text in the prompt ("a few thousand characters" in the reference)
    max_tokens: int = 16  # one letter; a little room for models that add a period or a label
    temperature: float = 0.0

    @property
    def url(self) -> str:
        endpoint = self.endpoint.rstrip("/")
        return endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"


def parse_vote(content: Optional[str]) -> Optional[str]:
    """'A' or 'B' when the answer is exactly one of them (see the module docstring), else None."""
    match = _VOTE.match((content or "").strip())
    return match[1].upper() if match else None


def messages_for(window: Window, first: str, second: str, max_chars: int) -> List[Dict[str, str]]:
    def cut(text: str) -> str:
        text = text.strip()
        return (text[:max_chars] + " [...]" if len(text) > max_chars else text) or EMPTY_TEXT

    user = (f"Time: {window.stream_start:.1f}-{window.stream_end:.1f} s of the video.\n\n"
            f"Reference transcript:\n{cut(window.reference)}\n\n"
            f"Candidate A:\n{cut(first)}\n\nCandidate B:\n{cut(second)}\n\n"
            "Which candidate is more faithful to the reference? Answer with one letter, A or B.")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def request_body(config: JudgeConfig, messages: List[Dict[str, str]]) -> Dict:
    return {"model": config.model, "messages": messages, "temperature": config.temperature,
            "max_tokens": config.max_tokens}


def request_key(body: Dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class AnswerCache:
    """Answers the server gave, one JSON line each, appended and flushed as they arrive."""

    def __init__(self, path: Path):
        self.path = path
        self.answers: Dict[str, str] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    item = json.loads(line)
                    self.answers[item["key"]] = item["answer"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by an interrupted run: that question is asked again
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[str]:
        return self.answers.get(key)

    def put(self, key: str, answer: str) -> None:
        with self._lock:
            self.answers[key] = answer
            with self.path.open("a") as handle:
                handle.write(json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n")


class ChatClient:
    """POSTs chat completions with retries; returns (answer, error kind, retried kinds)."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.requests_sent = 0
        self._lock = threading.Lock()

    def ask(self, body: Dict) -> Tuple[Optional[str], Optional[str], List[str]]:
        retried: List[str] = []
        data = json.dumps(body).encode()
        for attempt in range(self.config.retries + 1):
            with self._lock:
                self.requests_sent += 1
            kind, retry_after = None, 0.0
            try:
                request = urllib.request.Request(self.config.url, data=data, headers=self.headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                content = payload["choices"][0]["message"]["content"]
                return ("" if content is None else str(content)), None, retried
            except urllib.error.HTTPError as error:
                kind = f"http_{error.code}"
                if error.code != 429 and error.code < 500:
                    return None, kind, retried  # the request itself is wrong: asking again cannot help
                retry_after = _seconds(error.headers.get("Retry-After") if error.headers else None)
            except (TimeoutError, socket.timeout):
                kind = "timeout"
            except urllib.error.URLError as error:
                kind = "timeout" if isinstance(error.reason, (TimeoutError, socket.timeout)) else "connection"
            except (ConnectionError, http.client.HTTPException, OSError):
                kind = "connection"
            except (ValueError, KeyError, IndexError, TypeError):
                kind = "bad_response"  # not the chat-completions JSON: a proxy's error page, a truncated body
            if attempt == self.config.retries:
                return None, kind, retried
            retried.append(kind)
            delay = self.config.backoff_s * 2 ** attempt + random.uniform(0, self.config.backoff_s)
            time.sleep(min(max(delay, retry_after), 60.0))
        return None, "no_attempt", retried


def _seconds(value: Optional[str]) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def judge_pairs(pairs: Sequence[Tuple[Window, Window]], config: JudgeConfig, out: Path,
                cache_path: Optional[Path] = None, names: Tuple[str, str] = ("A", "B")) -> Dict:
    """Ask the judge about every window with reference text, twice; write answers and summary."""
    if config.concurrency < 1 or config.retries < 0 or config.timeout_s <= 0:
        raise ValueError("--concurrency must be >= 1, --retries >= 0 and --timeout > 0")
    out.mkdir(parents=True, exist_ok=True)
    cache = AnswerCache(cache_path or out / "judge_cache.jsonl")
    client = ChatClient(config)
    judged = [(a, b) for a, b in pairs if a.reference]
    asks = []  # (window number, order, body, key); order "AB": run A shown as "A"
    for number, (a, b) in enumerate(judged):
        for order, (first, second) in (("AB", (a.hypothesis, b.hypothesis)), ("BA", (b.hypothesis, a.hypothesis))):
            body = request_body(config, messages_for(a, first, second, config.max_chars))
            asks.append((number, order, body, request_key(body)))
    results: Dict[int, Dict] = {}
    pending = []
    for i, (_, _, _, key) in enumerate(asks):
        answer = cache.get(key)
        if answer is None:
            pending.append(i)
        else:
            results[i] = {"answer": answer, "error": None, "retried": [], "cached": True}
    log.info("judge: %d windows, %d questions, %d cached, %d to ask %s", len(judged), len(asks),
             len(asks) - len(pending), len(pending), config.url)
    executor = ThreadPoolExecutor(max_workers=config.concurrency)
    try:
        futures = {executor.submit(client.ask, asks[i][2]): i for i in pending}
        for future in progress(as_completed(futures), total=len(futures), desc="judge", unit="ask"):
            i = futures[future]
            answer, error, retried = future.result()
            if answer is not None:
                cache.put(asks[i][3], answer)
            results[i] = {"answer": answer, "error": error, "retried": retried, "cached": False}
    except KeyboardInterrupt:
        executor.shutdown(wait=False, cancel_futures=True)
        log.warning("judge interrupted: %d answers are cached; run the same command again to resume",
                    len(cache.answers))
        raise
    executor.shutdown(wait=True)
    summary, answers = _tally(judged, asks, results, names)
    summary.update(endpoint=config.url, model=config.model, requests_sent=client.requests_sent)
    with (out / "judge_answers.jsonl").open("w") as handle:
        for answer in answers:
            handle.write(json.dumps(answer, ensure_ascii=False) + "\n")
    (out / "judge.json").write_text(json.dumps(summary, indent=2))
    (out / "judge.md").write_text(markdown(summary))
    return summary


def _tally(judged, asks, results: Dict[int, Dict], names: Tuple[str, str]) -> Tuple[Dict, List[Dict]]:
    per_window = [{"votes_a": 0, "votes_b": 0, "invalid": 0, "errors": 0} for _ in judged]
    errors: Dict[str, int] = {}
    retried: Dict[str, int] = {}
    first_position = 0
    answers = []
    for i, (number, order, body, key) in enumerate(asks):
        result = results[i]
        letter = parse_vote(result["answer"]) if result["error"] is None else None
        run = None if letter is None else (letter if order == "AB" else {"A": "B", "B": "A"}[letter])
        tally = per_window[number]
        if result["error"] is not None:
            tally["errors"] += 1
            errors[result["error"]] = errors.get(result["error"], 0) + 1
        elif run is None:
            tally["invalid"] += 1
        else:
            tally["votes_a" if run == "A" else "votes_b"] += 1
            first_position += letter == "A"
        for kind in result["retried"]:
            retried[kind] = retried.get(kind, 0) + 1
        a = judged[number][0]
        answers.append({"bag": a.bag, "camera": a.camera, "window": a.index, "stream_start": a.stream_start,
                        "stream_end": a.stream_end, "order": order, "key": key, "answer": result["answer"],
                        "letter": letter, "vote": run, "error": result["error"], "retried": result["retried"],
                        "cached": result["cached"]})
    windows = []
    for (a, _), tally in zip(judged, per_window):
        valid = tally["votes_a"] + tally["votes_b"]
        windows.append({"bag": a.bag, "camera": a.camera, "window": a.index, "stream_start": a.stream_start,
                        "stream_end": a.stream_end, **tally,
                        "win_rate_a": tally["votes_a"] / valid if valid else None})
    votes_a = sum(w["votes_a"] for w in windows)
    votes_b = sum(w["votes_b"] for w in windows)
    valid = votes_a + votes_b
    summary = {
        "a": names[0], "b": names[1], "windows": len(judged), "questions": len(asks),
        "valid_votes": valid, "votes_a": votes_a, "votes_b": votes_b,
        "win_rate_a": votes_a / valid if valid else None, "win_rate_b": votes_b / valid if valid else None,
        "invalid_answers": sum(w["invalid"] for w in windows), "errors": errors,
        "retried": retried, "cached_answers": sum(r["cached"] for r in results.values()),
        # both asks of a window naming the same run: low when the judge follows the position
        "consistent_windows": sum(w["votes_a"] == 2 or w["votes_b"] == 2 for w in windows),
        "first_position_share": first_position / valid if valid else None,
        "per_window": windows}
    return summary, answers


def markdown(summary: Dict) -> str:
    rate = summary["win_rate_a"]
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(summary["errors"].items())) or "none"
    return (f"A = {summary['a']}, B = {summary['b']}, judge {summary.get('model', '?')}\n\n"
            f"| windows | questions | valid votes | votes A | votes B | win rate A | invalid answers | errors |\n"
            f"|---|---|---|---|---|---|---|---|\n"
            f"| {summary['windows']} | {summary['questions']} | {summary['valid_votes']} | {summary['votes_a']} | "
            f"{summary['votes_b']} | {'-' if rate is None else f'{rate:.3f}'} | {summary['invalid_answers']} | "
            f"{errors} |\n")
