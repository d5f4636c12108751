"""`svlm judge`: StreamingVLM's Inf-Streams-Eval pairwise LLM judge over time windows.

This module owns the judge protocol, its defaults (`JudgeConfig`, which the command line's
defaults come from) and its tally. The protocol, as StreamingVLM's evaluation runs it:

- One question per evaluation window that has reference text (a window with nothing in the
  reference gives the judge nothing to check fidelity against): the reference transcript and
  both candidates' text of that window in one prompt, each cut to `max_chars` characters,
  temperature 0, and a system prompt that asks for a strict verdict on fidelity to the
  reference, answered with exactly one letter.
- Every window is asked twice, run A shown first as "A" and then run B shown first as "A", so
  position bias cancels out; each answer is mapped back to the run it names.
- Win rate of A = votes for A / all valid votes (votes for A or B), per window and overall.
  Answers that are neither A nor B (after trimming spaces, quotes, `*` and a final period, and
  an optional "Answer:" label) are counted as invalid, not as votes.

The asking is `svlm_ros/chat.py`'s, shared with `svlm label`: its retry policy (connection
failures, time-outs, 408/409/425/429 and 5xx are retried with backoff, at least the server's
Retry-After), and its answer cache. Failures that remain are counted by kind and none of them
stops the run; one that would fail every question (the endpoint unreachable, 401, 403, 404) is
logged once with what to check.

Every answer, cached or fresh, is written to `judge_answers.jsonl`. The cache
(`judge_cache.jsonl` by default, one line per answer the server gave, valid or not) is keyed by
the SHA-256 of the request body (model, messages, temperature, max_tokens), not the endpoint's
address, so the same question to the same model is never asked twice and an interrupted run
resumes where it stopped; failed asks are not cached and are asked again next time.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..chat import AnswerCache, ChatClient, chat_url, request_key
from ..progress import progress
from .quality import EvalWindow

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
    retries: int = 3  # after the first attempt, for 5xx, 429, 408, time-outs and connection errors
    backoff_s: float = 1.0  # first retry waits about this long (plus up to 25%), doubling each time
    max_chars: int = 4000  # per text in the prompt ("a few thousand characters" in the reference)
    max_tokens: int = 16  # one letter; a little room for models that add a period or a label
    temperature: float = 0.0
    max_backoff_s: float = 60.0  # no wait is longer, a server's Retry-After included

    @property
    def url(self) -> str:
        return chat_url(self.endpoint)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """The judge's endpoint and asking flags, their defaults JudgeConfig's (`svlm judge`)."""
    parser.add_argument("--endpoint", required=True,
                        help="OpenAI-compatible API base URL (…/v1) or its /chat/completions URL")
    parser.add_argument("--model", required=True, help="the judge model's name at the endpoint")
    parser.add_argument("--api-key-env", default=JudgeConfig.api_key_env,
                        help="environment variable holding the API key (unset: no key is sent)")
    parser.add_argument("--concurrency", type=int, default=JudgeConfig.concurrency, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=JudgeConfig.timeout_s, help="seconds per request")
    parser.add_argument("--retries", type=int, default=JudgeConfig.retries,
                        help="retries on 5xx, 429, 408, time-outs, connection errors")
    parser.add_argument("--backoff", type=float, default=JudgeConfig.backoff_s,
                        help="first retry delay in seconds (doubles)")
    parser.add_argument("--max-chars", type=int, default=JudgeConfig.max_chars,
                        help="characters of each text in a prompt")


def config_from_args(args: argparse.Namespace) -> JudgeConfig:
    return JudgeConfig(args.endpoint, args.model, api_key_env=args.api_key_env, concurrency=args.concurrency,
                       timeout_s=args.timeout, retries=args.retries, backoff_s=args.backoff,
                       max_chars=args.max_chars)


def parse_vote(content: Optional[str]) -> Optional[str]:
    """'A' or 'B' when the answer is exactly one of them (see the module docstring), else None."""
    match = _VOTE.match((content or "").strip())
    return match[1].upper() if match else None


def messages_for(window: EvalWindow, first: str, second: str, max_chars: int) -> List[Dict[str, str]]:
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


def judge_pairs(pairs: Sequence[Tuple[EvalWindow, EvalWindow]], config: JudgeConfig, out: Path,
                cache_path: Optional[Path] = None, names: Tuple[str, str] = ("A", "B")) -> Dict:
    """Ask the judge about every window with reference text, twice; write answers and summary."""
    if config.concurrency < 1 or config.retries < 0 or config.timeout_s <= 0:
        raise ValueError("--concurrency must be >= 1, --retries >= 0 and --timeout > 0")
    stop = threading.Event()
    api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    client = ChatClient(config.endpoint, api_key, timeout_s=config.timeout_s, retries=config.retries,
                        backoff_s=config.backoff_s, max_backoff_s=config.max_backoff_s, stop=stop,
                        key_hint=f"the key in ${config.api_key_env} (--api-key-env)")
    out.mkdir(parents=True, exist_ok=True)
    cache = AnswerCache(cache_path or out / "judge_cache.jsonl")
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
    told = False
    try:
        futures = {executor.submit(client.ask, asks[i][2]): i for i in pending}
        for future in progress(as_completed(futures), total=len(futures), desc="judge", unit="ask"):
            i = futures[future]
            outcome = future.result()
            if outcome.answer is not None:
                cache.put(asks[i][3], outcome.answer)
            elif outcome.fatal and not told:
                told = True  # the same for every question: said once, counted for each
                log.error("judge: %s", outcome.error)
            results[i] = {"answer": outcome.answer, "error": None if outcome.answer is not None else outcome.kind,
                          "retried": outcome.retried, "cached": False}
    except KeyboardInterrupt:
        stop.set()  # asks waiting to retry give up now instead of sleeping out their backoff
        executor.shutdown(wait=False, cancel_futures=True)
        log.warning("judge interrupted: %d answers are cached; run the same command again to resume", len(cache))
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
