"""Windows of real text for evaluation: evenly spaced over the text, each with the token after each
of its positions."""

from __future__ import annotations

import torch

from kdcore.problems import KDError


def window_starts(tokens: int, seq_len: int) -> int:
    """How many windows of `seq_len` tokens, each with the token after it, a text of `tokens` holds."""
    return tokens - seq_len


def text_windows(tokens: list[int], seq_len: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` evenly spaced windows (count, S) and the token after each position (count, S); fewer
    where the text holds fewer (`kd validate` refuses such a text)."""
    if window_starts(len(tokens), seq_len) < 1:
        raise KDError(f"the evaluation text has {len(tokens)} tokens, fewer than a window of {seq_len} + 1")
    last = len(tokens) - seq_len - 1
    starts = torch.linspace(0, last, steps=min(count, last + 1)).round().long().unique()
    t = torch.tensor(tokens)
    windows = torch.stack([t[s : s + seq_len] for s in starts])
    nexts = torch.stack([t[s + 1 : s + seq_len + 1] for s in starts])
    return windows, nexts
