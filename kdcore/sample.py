"""`kd sample`: try a trained student, its continuation of a prompt beside the teacher's.

The student is the one the run ships (loaded from runs/<name>/reverted, as `kd eval` loads it):
greedy, or sampled at a temperature with nucleus (top-p) filtering from a seed.
"""

from __future__ import annotations

import torch

from kdcore.build import Builder
from kdcore.evaluate import greedy_student, greedy_teacher, trained_student
from kdcore.runfolder import RunFolder
from kdcore.spec import Spec


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


def continue_both(spec: Spec, prompt: str, steps: int, temperature: float = 0.0, top_p: float = 1.0,
                  seed: int = 0, chat: bool = False) -> list[tuple[str, str]]:
    """[("teacher", text), ("student", text)] continuing `prompt`."""
    from kdcore.train import student_seq_len

    builder = Builder(spec)
    student = trained_student(spec, RunFolder(spec))
    teacher = builder.teacher
    tok = teacher.tokenizer()
    ids = tok.chat(prompt) if chat else tok.encode(prompt)
    if temperature == 0:
        by_teacher = greedy_teacher(teacher, ids, steps)
    else:
        full = teacher.generate(torch.tensor([ids]), steps, picker(temperature, top_p, seed)) if steps else None
        by_teacher = full[0, len(ids):].tolist() if steps else []
    by_student = student_continuation(student, ids, steps, student_seq_len(spec), temperature, top_p, seed)
    return [("teacher", tok.decode(by_teacher)), ("student", tok.decode(by_student))]
