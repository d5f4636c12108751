"""Sentence embeddings in a process of their own, for the node.

Embedding a new text in the node's process costs the inference worker about 15 ms a window on
a 2-core CPU (docs/benchmarks.md, "Memory on, memory off"): the tokenizer and the model's Python
hold the interpreter lock the worker needs between decoding steps. A child process (one torch
thread, lower CPU priority) takes that work away; the parent only waits on a pipe, which holds
no lock. Same call as `store.Embedder`: texts in, unit float32 vectors out.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from typing import Optional, Sequence

import numpy as np

from .store import MemoryError

log = logging.getLogger(__name__)
NICE = 10  # the child yields the CPU to the inference worker


def _serve(connection) -> None:
    # A Ctrl-C reaches the whole process group: the parent shuts down in order and closes the pipe,
    # which ends this loop; the child must not die first with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(NICE)
    except OSError:
        pass
    import torch

    torch.set_num_threads(1)
    from .store import Embedder

    embedder = Embedder()
    while True:
        try:
            texts = connection.recv()
        except EOFError:  # the parent is gone
            return
        if texts is None:
            return
        try:
            connection.send(embedder(texts))
        except Exception as error:  # noqa: BLE001 - reported to the caller, the child goes on
            connection.send(error)


class ProcessEmbedder:
    def __init__(self):
        self._lock = threading.Lock()
        self._process: Optional[multiprocessing.Process] = None
        self._connection = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch and DDS threads
        parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), name="svlm-embedding", daemon=True)
        self._process.start()
        child.close()
        self._connection = parent

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._process is None:
                self._start()
            try:
                self._connection.send(list(texts))
                answer = self._connection.recv()
            except (EOFError, OSError, BrokenPipeError) as error:
                self._process = None
                raise MemoryError(f"the embedding process stopped ({error}); it restarts with the next text") \
                    from error
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        with self._lock:
            if self._process is None:
                return
            try:
                self._connection.send(None)
            except (OSError, BrokenPipeError):
                pass
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
            self._connection.close()
            self._process = None
