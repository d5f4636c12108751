"""Next-token choice: repetition penalty, temperature, top-k/top-p, or greedy."""
from __future__ import annotations

from typing import Optional

import torch

from ..config import GenerationConfig


class Sampler:
    def __init__(self, config: GenerationConfig, vocab_size: int, device: torch.device):
        self.config = config
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(config.seed if config.seed is not None else torch.seed() % (2**63))
        self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)

    def start(self, context_tokens: torch.Tensor) -> None:
        """Tokens the repetition penalty applies to: the cache's text, as HF applies it to input_ids."""
        self.seen.zero_()
        self.seen[context_tokens] = True

    def add(self, token: torch.Tensor) -> None:
        self.seen[token] = True

    def draw(self, logits: torch.Tensor, banned: Optional[int] = None) -> torch.Tensor:
        """Choose from (vocab,) logits; `banned` (end of turn when forcing length) is never chosen.

        Returns a (1,) tensor on the logits' device and never reads a value back to the host, so
        on a GPU the next decode step can be queued before this token is known here.
        """
        cfg = self.config
        logits = logits.float().clone()  # the caller's logits (session.last_logits) stay untouched
        if cfg.repetition_penalty != 1.0:
            penalized = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
            logits = torch.where(self.seen[: logits.shape[-1]], penalized, logits)
        if banned is not None:
            logits[banned] = float("-inf")
        if not cfg.do_sample:
            return logits.argmax().reshape(1)
        logits = logits / cfg.temperature
        if cfg.top_k is not None:
            threshold = torch.topk(logits, min(cfg.top_k, logits.shape[-1])).values[-1]
            logits = logits.masked_fill(logits < threshold, float("-inf"))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.softmax(-1) > cfg.top_p
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        # Inverse-CDF draw: one cumsum and a binary search, much cheaper than torch.multinomial
        # over a 150k-token vocabulary on CPU.
        cumulative = logits.softmax(-1).cumsum(-1)
        draw = torch.rand(1, generator=self.generator, device=logits.device) * cumulative[-1]
        return torch.searchsorted(cumulative, draw).clamp(max=logits.shape[-1] - 1)
