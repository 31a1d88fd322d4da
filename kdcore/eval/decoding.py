"""Continuing a prompt: the teacher with its KV cache, a student with its own `generate` or by
re-reading its window for every token; greedy, or sampled at a temperature with nucleus filtering."""

from __future__ import annotations

import torch


def greedy_student(model, ids: list[int], seq_len: int, steps: int) -> list[int]:
    """The student's greedy continuation: its own `generate` (a causal LM's KV cache) where it has one,
    else re-reading the last `seq_len` tokens (a fixed-length student's window) for every new token."""
    if hasattr(model, "generate"):
        return model.generate(ids, steps)
    out = list(ids)
    for _ in range(steps):
        window = out[-seq_len:]
        x = torch.zeros(1, seq_len, dtype=torch.long)
        x[0, : len(window)] = torch.tensor(window)
        logits = model(x, torch.tensor([len(window)]), positions="last")
        out.append(int(logits[0].argmax()))
    return out[len(ids):]


def greedy_teacher(teacher, ids: list[int], steps: int) -> list[int]:
    if steps == 0:
        return []
    full = teacher.generate(torch.tensor([ids]), steps, lambda logits, step: logits.argmax(-1))
    return full[0, len(ids):].tolist()


def picker(temperature: float, top_p: float, seed: int):
    """pick(logits (B, V), step) -> (B,) next tokens: greedy at temperature 0, else sampled."""
    g = torch.Generator().manual_seed(seed)

    def pick(logits: torch.Tensor, step: int) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float().cpu() / temperature, -1)
        if top_p < 1:
            sorted_p, order = probs.sort(-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        return torch.multinomial(probs, 1, generator=g)[:, 0]

    return pick


def student_continuation(student, ids: list[int], steps: int, seq_len: int, temperature: float, top_p: float,
                         seed: int) -> list[int]:
    if temperature == 0:
        return greedy_student(student, ids, seq_len, steps)
    if hasattr(student, "model"):  # a transformers causal LM: its own sampling, as a user would call it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = torch.tensor([ids])
            out = student.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=steps,
                                         do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        return out[0, len(ids):].tolist()
    pick, out = picker(temperature, top_p, seed), list(ids)
    for step in range(steps):
        window = out[-seq_len:]
        x = torch.zeros(1, seq_len, dtype=torch.long)
        x[0, : len(window)] = torch.tensor(window)
        with torch.inference_mode():
            out.append(int(pick(student(x, torch.tensor([len(window)]), positions="last"), step)[0]))
    return out[len(ids):]
