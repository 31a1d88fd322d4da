"""Generation: noise from the sampler through the frozen teacher into one dataset's store.

Blocks are split by rank (block b belongs to rank b % world, or, for a sampler that decodes groups
of samples, to the rank of the group of its first row), each written whole then committed; a
re-run redoes only uncommitted blocks. A store made from a different spec or teacher is refused,
never overwritten, unless `overwrite=True` (`kdcore.store.lifecycle`).
"""

from __future__ import annotations

import time
from contextlib import ExitStack

import numpy as np
import torch

from kdcore.config.spec import Spec, spec_hash
from kdcore.plugin.contracts import runs_teacher
from kdcore.plugin.data import Inputs, Targets, last_positions, sample_seed
from kdcore.plugin.params import content_inputs
from kdcore.problems import KDError
from kdcore.report.console import reporter
from kdcore.run.metrics_log import MetricsLog
from kdcore.stages import checks
from kdcore.stages.builder import Builder
from kdcore.stages.stage import PlanRow, Status
from kdcore.store import lifecycle
from kdcore.store.integrity import damage, damaged_blocks
from kdcore.store.layout import Layout, human_bytes
from kdcore.store.records import input_checksum
from kdcore.store.store import Store
from kdcore.system import dist
from kdcore.system.files import disk_full
from kdcore.system.locks import hold
from kdcore.system.threads import background
from kdcore.texts import text_hash

INPUT_CHECKSUMS = "input checksums"  # carried with a block's arrays into its commit record, not stored as one


class GenerateStage:
    """One dataset's store: the teacher's targets on the sampler's samples."""

    def __init__(self, spec: Spec, dataset: str, builder: Builder | None = None):
        self.spec, self.dataset = spec, dataset
        self.builder = builder or Builder(spec)
        self.ds = spec.datasets[dataset]
        self.path = spec.store_path(dataset)
        self.name = f"generate {dataset}"

    # --- identity and status ---
    def identity(self) -> dict:
        """What the dataset's content depends on: its spec (minus the batch size), the teacher's, and
        the content of every file its sampler reads (`contents`, present only where there is one)."""
        ds = self.spec.resolved()["datasets"][self.dataset]
        ds.pop("batch_size")
        teacher = {k: v for k, v in self.spec.teacher.resolved().items() if k not in ("device", "batch_size")}
        contents = {key: text_hash(ref, self.spec.base_dir, key)
                    for key, ref in content_inputs(self.ds.sampler, "sampler")}
        return {"dataset": ds, "teacher": teacher, **({"contents": contents} if contents else {})}

    def identity_hash(self) -> str:
        return spec_hash(self.identity())

    def status(self) -> Status:
        """What `kd generate` would find: nothing, a store to resume, a complete one, or another spec's."""
        if not self.path.exists():
            return Status("todo")
        try:
            store = Store.open(self.path)
        except KDError as e:
            return Status("stale", f"unreadable: {e}")
        changed = lifecycle.differences(store, self.identity(), self.identity_hash())
        if changed:
            return Status("stale", f"made by another spec ({'; '.join(changed)}): refused (--overwrite replaces it)")
        if not store.complete:
            return Status("resume")
        damaged = damaged_blocks(damage(store))  # a stat per chunk file
        if damaged:
            return Status("resume", f"damaged blocks {', '.join(map(str, damaged))}")
        return Status("resume", "leftovers of killed writes to remove") if store.leftovers() else Status("done")

    # --- what it would do ---
    def layout(self, vocab_size: int, produces: str) -> Layout:
        return Layout.of(self.ds, vocab_size, produces)

    def batches(self, layout: Layout, blocks: list[int]) -> list[tuple[int, list[int]]]:
        """(block, indices) of every teacher batch over `blocks`; a batch never spans two blocks."""
        out = []
        for b in blocks:
            lo, hi = layout.block_range(b)
            out += [(b, list(range(s, min(s + self.ds.batch_size, hi)))) for s in range(lo, hi, self.ds.batch_size)]
        return out

    def plan(self) -> list[PlanRow]:
        layout = self.layout(self.builder.teacher.vocab_size, self.builder.sampler(self.dataset).produces)
        forwards = len(self.batches(layout, list(range(layout.num_blocks))))
        return [PlanRow("generate", f"{self.dataset}: {self.ds.samples} x {self.ds.max_seq_len} ({self.ds.sampler.name})",
                        f"{forwards} batches of up to {self.ds.batch_size}", f"{self.ds.samples * self.ds.max_seq_len:,}",
                        human_bytes(layout.bytes_per_sample() * self.ds.samples), str(self.status()))]

    def checked_sampler(self):
        """The sampler, after the dataset is checked against the teacher and the store it would make."""
        checks.raise_any(checks.dataset_problems(self.spec, self.dataset, self.builder.teacher))
        sampler = self.builder.sampler(self.dataset)
        checks.raise_any(checks.store_problems(self.spec, self.dataset, sampler, self.builder.teacher.vocab_size))
        return sampler

    # --- running it ---
    def attrs(self, teacher, sampler) -> dict:
        """What the store records of its making: the spec it came from, the teacher and the sampler."""
        return {
            "name": self.dataset, "experiment": self.spec.name,
            "spec": self.spec.resolved()["datasets"][self.dataset],
            "identity": self.identity(), "identity_hash": self.identity_hash(),
            "teacher": {"name": teacher.name, "id": teacher.identity, "fingerprint": teacher.fingerprint(),
                        "device": str(teacher.device), "dtype": str(teacher.dtype).removeprefix("torch.")},
            "sampler": {"name": self.ds.sampler.name, "produces": sampler.produces, "deterministic": sampler.deterministic},
            "vocab_size": teacher.vocab_size,
        }

    def run(self, overwrite: bool = False, repair: bool = False, log: MetricsLog | None = None) -> Store:
        """Generate (or resume, or with `repair` verify and mend) the store. Rank 0 holds the store's
        lock throughout: another `kd generate` on it stops at once, naming this process."""
        dist.init()
        teacher, sampler = self.builder.teacher, self.checked_sampler()
        layout = self.layout(teacher.vocab_size, sampler.produces)
        if not (overwrite or repair) and self.status().done:  # nothing to write: read it under a shared lock
            return self._check_complete(self.attrs(teacher, sampler))
        with ExitStack() as held:
            store = self._open(self.attrs(teacher, sampler), layout, overwrite, repair, held)
            if not store.complete:
                blocks = owned_blocks(store, layout, getattr(sampler, "group", None))
                needed = lambda: human_bytes(lifecycle.missing(self.path, layout)[1])  # noqa: E731
                with disk_full(self.path, "the store", needed):
                    self._write(store, layout, self.batches(layout, blocks), teacher, sampler, log)
                dist.barrier()
                if dist.is_main() and Store.open(store.path).committed().all():
                    Store.open(store.path, mode="r+").mark_complete()
                dist.barrier()
            return Store.open(store.path, mode="r")

    def _check_complete(self, attrs: dict) -> Store:
        """A complete store of this identity, checked against the teacher that would make it now (its
        weights, and its device where samples depend on it); shared with readers such as training."""
        with hold(self.path, f"store {self.path}", shared=True):
            store = Store.open(self.path)
            changed = lifecycle.differences(store, attrs["identity"], attrs["identity_hash"], attrs)
            if changed:
                raise KDError(f"{self.path} holds a different dataset than {self.spec.source} datasets.{self.dataset} "
                              "would generate:\n  " + "\n  ".join(changed) + "\nNothing was changed. Name a new "
                              f"dataset, or pass --overwrite to regenerate {self.path}.")
            return store

    def _open(self, attrs: dict, layout: Layout, overwrite: bool, repair: bool, held: ExitStack) -> Store:
        """The store to write, checked (rank 0, holding the store's lock in `held`), on every rank."""
        error = None
        if dist.is_main():
            try:
                held.enter_context(hold(self.path, f"store {self.path}"))
                notes = lifecycle.prepare(self.path, self.spec.source, f"datasets.{self.dataset}", attrs, layout,
                                          overwrite, repair)
                for note in notes:
                    reporter.note(note)
            except KDError as e:  # every rank must hear of it, or the others wait forever
                error = str(e)
        error = dist.broadcast_object(error)
        if error:
            raise KDError(error)
        dist.barrier()
        return Store.open(self.path, mode="r+")

    def _write(self, store: Store, layout: Layout, batches: list, teacher, sampler, log: MetricsLog | None) -> None:
        """Every batch through the teacher, each block written (and committed) as soon as it is whole.
        The next batch is sampled, and finished blocks written, by idle-priority helpers while the
        teacher runs this batch; a sampler that runs the teacher itself is the teacher's work, done
        here in turn at normal priority."""
        seed, ahead = self.ds.seed, not runs_teacher(sampler)
        total = sum(len(indices) for _, indices in batches)
        start, done, tokens = time.perf_counter(), 0, 0
        with reporter.bar() as pbar, background("sample") as sampling, background("write") as writer:
            task = pbar.add_task(f"generate {self.dataset}", total=total, rate="")
            upcoming = sampling.submit(sampler.sample, batches[0][1], seed) if batches and ahead else None
            parts, pending = [], None
            for i, (b, indices) in enumerate(batches):
                inputs = upcoming.result() if ahead else sampler.sample(indices, seed)
                if ahead and i + 1 < len(batches):
                    upcoming = sampling.submit(sampler.sample, batches[i + 1][1], seed)
                parts.append(self._targets(indices, inputs, layout, teacher))
                del inputs  # a view of a sampler's cached group: let the next group reuse its memory
                done, tokens = done + len(indices), tokens + int(parts[-1]["length"].sum())
                elapsed = time.perf_counter() - start
                pbar.update(task, completed=done, rate=f"{done / elapsed:.1f} samples/s {tokens / elapsed:.0f} tok/s")
                if i + 1 == len(batches) or batches[i + 1][0] != b:  # block b is whole: write it
                    if pending is not None:
                        pending.result()  # one block in flight: bounded memory, errors surface
                    data = concat(parts)
                    pending = writer.submit(store.write_block, b, data, data.pop(INPUT_CHECKSUMS, None))
                    parts = []
            if pending is not None:
                pending.result()
        if log is not None and done:
            elapsed = time.perf_counter() - start
            log.write("generate", {"dataset": self.dataset, "samples": int(done), "tokens": int(tokens),
                                   "seconds": round(elapsed, 3), "samples_per_s": round(done / elapsed, 3),
                                   "rank": dist.rank()})

    def _targets(self, indices: list[int], inputs: Inputs, layout: Layout, teacher) -> dict[str, np.ndarray]:
        """A batch's arrays: seeds, inputs as stored, and the teacher's targets."""
        logits = teacher_logits(teacher, inputs, self.ds.positions)
        targets = Targets.topk_of(logits, self.ds.topk) if self.ds.logits == "topk" else Targets(logits=logits)
        part = {"seed": np.array([sample_seed(self.ds.seed, i) for i in indices], dtype=np.int64),
                **inputs_to_arrays(inputs, layout), **targets_to_arrays(targets, self.dataset)}
        if layout.regenerates_inputs:  # training regenerates them: record what they were
            part[INPUT_CHECKSUMS] = np.array([input_checksum(row) for row in inputs.soft], dtype=np.uint32)
        return part


def targets_to_arrays(targets: Targets, dataset: str = "") -> dict[str, np.ndarray]:
    """Stored as float16 (values) and float32 (logsumexp); NaN, inf and logits past float16's range
    are refused."""
    values = targets.values if targets.is_topk else targets.logits
    peak = values.abs().max()
    where = f"datasets.{dataset}: " if dataset else ""
    if not torch.isfinite(peak) or (targets.is_topk and not torch.isfinite(targets.logsumexp).all()):
        raise KDError(f"{where}the teacher's logits hold NaN or inf; nothing of this batch was stored")
    if peak > 65504:
        raise KDError(f"{where}teacher logits reach {peak.item():.4g}, past float16's range (65504)")
    if targets.is_topk:
        return {"topk_values": targets.values.half().cpu().numpy(), "topk_indices": targets.indices.cpu().numpy(),
                "logsumexp": targets.logsumexp.float().cpu().numpy()}
    return {"logits": targets.logits.half().cpu().numpy()}


def inputs_to_arrays(inputs: Inputs, layout: Layout) -> dict[str, np.ndarray]:
    out = {"length": inputs.lengths.numpy().astype(np.int32)}
    if inputs.ids is not None:
        out["ids"] = inputs.ids.numpy().astype(np.int32)
    elif layout.inputs == "dense":
        out["inputs"] = inputs.soft.half().numpy()
    return out


def teacher_logits(teacher, inputs: Inputs, positions: str) -> torch.Tensor:
    """The teacher's logits at `positions`: those the sampler brought (it ran the teacher itself), and
    a forward for the other rows only."""
    have = inputs.logit_rows()
    if not have.any():
        return teacher.logits(inputs.to(teacher.device), positions)
    out = inputs.logits
    rest = (~have).nonzero()[:, 0]
    if positions == "last":  # a gather: a new tensor
        out = last_positions(out, inputs.lengths)
    elif len(rest):  # filled below: not the sampler's own tensor (it may be a view of its cache)
        out = out.clone()
    if len(rest):
        out[rest.to(out.device)] = teacher.logits(inputs.rows(rest).to(teacher.device), positions).to(out.device)
    return out


def concat(parts: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def owned_blocks(store: Store, layout: Layout, group: int | None) -> list[int]:
    """This rank's pending blocks: b % world, or, for a sampler that decodes fixed groups of samples
    together (`group`) larger than a block, by the group of the block's first row, so that each group
    is decoded by one rank (a block that straddles two groups shares the second with its neighbour's
    rank). Groups no larger than a block go by block, as otherwise every block could start in a
    group of rank 0."""
    rank, world = dist.rank(), dist.world()
    if not group or world == 1:
        return store.pending_blocks(rank, world)
    unit = max(group, layout.block_rows)
    return [b for b in store.pending_blocks(0, 1) if layout.block_range(b)[0] // unit % world == rank]


def generate(spec: Spec, dataset: str, builder: Builder | None = None, overwrite: bool = False, repair: bool = False,
             log: MetricsLog | None = None) -> Store:
    """Generate (or resume, or repair) one dataset's store: `GenerateStage(...).run(...)`."""
    return GenerateStage(spec, dataset, builder).run(overwrite=overwrite, repair=repair, log=log)
