"""Peak memory of the language-model head and its loss: every position versus labelled ones only.

    python -m training.lm_head_memory [--seconds 24] [--tokens-per-second 720] [--png FILE] [--measure]

A 24-s training window of 720p video is about 18k positions, of which only the answers (a few
hundred tokens) carry labels. Evaluating the 152,064-word head at every position materialises
(positions x vocabulary) logits, their fp32 copy for the loss and the gradient of both; at the
labelled positions only (what training/train.py does) the same loss costs a sliver of that.
The arithmetic model below counts those tensors; `--measure` runs the head + cross-entropy
forward and backward on CUDA (Qwen2.5-VL-7B's head: 3584 x 152064, bf16) and reads the peak.
"""
from __future__ import annotations

import argparse
import json

HIDDEN_7B = 3584
VOCAB_7B = 152_064
# Per second of a Qwen2.5-VL stream besides video: user turn (~9), vision start/end (2), turn
# ends (4), assistant opening (3), and the answer: words (~6) + marker (1) + <|im_end|> (1).
TEXT_PER_SECOND = 26
LABELS_PER_SECOND = 8
PREVIOUS_TEXT = 1024 + 20  # previous-text block at its cap, and the system turn


def estimate(positions: int, vocab: int = VOCAB_7B) -> int:
    """Bytes alive at the loss's peak: bf16 logits, their fp32 copy, and the fp32 gradient of
    the logits during backward (log-softmax's saved output is the fp32 copy's size again)."""
    return positions * vocab * (2 + 4 + 4 + 4)


def measure(positions: int, hidden: int = HIDDEN_7B, vocab: int = VOCAB_7B) -> int:
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda")
    head = torch.nn.Linear(hidden, vocab, bias=False, device=device, dtype=torch.bfloat16)
    states = torch.randn(positions, hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, vocab, (positions,), device=device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = F.cross_entropy(head(states).float(), targets)
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del loss, head, states
    torch.cuda.empty_cache()
    return peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=24, help="seconds per training window")
    parser.add_argument("--tokens-per-second", type=int, default=720, help="video tokens a second (720: 720p)")
    parser.add_argument("--png", default=None, help="also plot the figure to this file")
    parser.add_argument("--measure", action="store_true", help="measure on CUDA as well")
    args = parser.parse_args(argv)
    rows = []
    for seconds in sorted({4, 8, 12, 16, 24, args.seconds}):
        full = PREVIOUS_TEXT + seconds * (args.tokens_per_second + TEXT_PER_SECOND)
        labelled = seconds * LABELS_PER_SECOND
        row = {"seconds": seconds, "positions": full, "labels": labelled,
               "full_gib": estimate(full) / 2**30, "selected_gib": estimate(labelled) / 2**30}
        if args.measure:
            row["full_measured_gib"] = measure(full) / 2**30
            row["selected_measured_gib"] = measure(labelled) / 2**30
        rows.append(row)
    print(f"LM head + loss, Qwen2.5-VL-7B (vocabulary {VOCAB_7B:,}), {args.tokens_per_second} video tokens/s")
    print(f"{'window':>7} {'positions':>9} {'labels':>6} {'every position':>15} {'labelled only':>14}"
          + ("   measured (every / labelled)" if args.measure else ""))
    for row in rows:
        line = (f"{row['seconds']:>6}s {row['positions']:>9,} {row['labels']:>6} {row['full_gib']:>13.2f} G "
                f"{row['selected_gib']:>12.3f} G")
        if args.measure:
            line += f"   {row['full_measured_gib']:.2f} G / {row['selected_measured_gib']:.3f} G"
        print(line)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6.5, 4))
        seconds = [r["seconds"] for r in rows]
        key = "_measured_gib" if args.measure else "_gib"
        axis.plot(seconds, [r["full" + key] for r in rows], "o-", label="head at every position")
        axis.plot(seconds, [r["selected" + key] for r in rows], "o-", label="head at labelled positions only")
        axis.set_xlabel("training window (s of 720p video)")
        axis.set_ylabel("peak memory of head + loss (GiB)")
        axis.set_title("Qwen2.5-VL-7B LM head, bf16" + (" (measured, CUDA)" if args.measure else " (estimated)"))
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        figure.savefig(args.png, dpi=110)
        print(f"wrote {args.png}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
