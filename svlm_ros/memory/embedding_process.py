"""Sentence embeddings in a process of their own, for the node.

Embedding a new text in the node's process costs the inference worker about 15 ms a window on
a 2-core CPU (docs/benchmarks.md, "Memory on, memory off"): the tokenizer and the model's Python
hold the interpreter lock the worker needs between decoding steps. A child process (one torch
thread, lower CPU priority) takes that work away; the parent only waits on a pipe, which holds
no lock. Same call as `vectors.Embedder`: texts in, unit float32 vectors out.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Optional, Sequence

import numpy as np

from .errors import StoreError

log = logging.getLogger(__name__)
NICE = 10  # the child yields the CPU to the inference worker
PARENT_CHECK_S = 0.5  # how often the child looks whether its parent is still there


def _serve(connection) -> None:
    # A Ctrl-C reaches the whole process group: the parent shuts down in order and stops this
    # child; the child must not die first with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    # A parent killed with -9 cannot stop its child: the child notices the parent is gone (its
    # parent pid changes) and leaves at once, even in the middle of loading or embedding.
    threading.Thread(target=_exit_with_parent, args=(parent,), name="svlm-embedding-watch", daemon=True).start()
    try:
        os.nice(NICE)
    except OSError:
        pass
    try:
        import torch

        torch.set_num_threads(1)
        from .vectors import Embedder

        embedder = Embedder()
        while True:
            texts = connection.recv()
            if texts is None:
                return
            try:
                answer = embedder(texts)
            except Exception as error:  # noqa: BLE001 - reported to the caller, the child goes on
                answer = error
            connection.send(answer)
    except (EOFError, OSError):  # the pipe broke: the parent is gone or stopped us
        return
    finally:
        os._exit(0)  # no interpreter teardown (torch's threads, a half-sent answer): just go


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


class ProcessEmbedder:
    def __init__(self):
        self._lock = threading.Lock()
        self._process: Optional[multiprocessing.Process] = None
        self._connection = None
        self._closed = False

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch and DDS threads
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child,), name="svlm-embedding", daemon=True)
        process.start()
        child.close()
        # Published only once started: close() (not under the lock) may terminate it from then on.
        self._process, self._connection = process, parent

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._closed:
                raise StoreError("the embedding process is stopped (the memory is closing)")
            if self._process is None:
                self._start()
                if self._closed:  # closed while the child started: close() may not have seen it
                    self._process.terminate()
                    self._connection.close()
                    self._process = None
                    raise StoreError("the embedding process is stopped (the memory is closing)")
            try:
                self._connection.send(list(texts))
                answer = self._connection.recv()
            except (EOFError, OSError, BrokenPipeError) as error:
                self._process = None
                raise StoreError(f"the embedding process stopped ({error}); it restarts with the next text") \
                    from error
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self, timeout: float = 1.0) -> None:
        """Stop the child at once, whatever it is doing (loading the model, embedding): nothing is
        started, loaded or waited for beyond `timeout` for it to go. Later calls are refused."""
        self._closed = True
        process, connection = self._process, self._connection  # not under the lock: a call in flight holds it
        if process is None:
            return
        process.terminate()  # a call waiting on the pipe then fails at once with EOFError
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(timeout)
        with self._lock:
            connection.close()
            self._process = None
