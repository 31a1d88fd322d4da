"""What a student is read against besides the teacher: a unigram model of the evaluation text (the
student before training is the other baseline, made by the builder as training starts it)."""

from __future__ import annotations

import torch


class UnigramPredictor(torch.nn.Module):
    """Always the same distribution: token frequencies of the evaluation text (add-one smoothed)."""

    positions = ("last", "all")

    def __init__(self, tokens: list[int], vocab_size: int):
        super().__init__()
        counts = torch.ones(vocab_size)
        counts.index_add_(0, torch.tensor(tokens), torch.ones(len(tokens)))
        self.register_buffer("log_probs", (counts / counts.sum()).log())

    def forward(self, ids, lengths, positions="last"):
        shape = (ids.shape[0], self.log_probs.numel()) if positions == "last" else (*ids.shape, self.log_probs.numel())
        return self.log_probs.expand(shape)
