"""Generation: noise from the sampler through the frozen teacher into the store.

Blocks are split by rank (block b belongs to rank b % world, or, for a sampler that decodes groups
of samples, to the rank of the group of its first row), each written whole then committed;
a re-run redoes only uncommitted blocks. A store made from a different spec or teacher is refused,
never overwritten, unless `overwrite=True`.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import torch

from kdcore import dist
from kdcore.build import Builder
from kdcore.components import Inputs, Targets, sample_seed
from kdcore.errors import StoreError
from kdcore.progress import bar
from kdcore.spec import Spec, spec_hash
from kdcore.store import Layout, Store, describe_difference
from kdcore.threads import background


def layout_for(spec: Spec, dataset: str, vocab_size: int, produces: str) -> Layout:
    ds = spec.datasets[dataset]
    return Layout(
        num_samples=ds.samples, max_seq_len=ds.max_seq_len, vocab_size=vocab_size,
        positions=ds.positions, logits=ds.logits, topk=ds.topk, inputs=ds.inputs,
        produces=produces, block_rows=ds.block_size,
    )


def store_attrs(spec: Spec, dataset: str, teacher, sampler) -> dict:
    identity = spec.dataset_identity(dataset)
    return {
        "name": dataset,
        "experiment": spec.name,
        "spec": spec.resolved()["datasets"][dataset],
        "identity": identity,
        "identity_hash": spec_hash(identity),
        "teacher": {"name": teacher.name, "id": teacher.identity, "fingerprint": teacher.fingerprint(),
                    "device": str(teacher.device), "dtype": str(teacher.dtype).removeprefix("torch.")},
        "sampler": {"name": spec.datasets[dataset].sampler.name, "produces": sampler.produces,
                    "deterministic": sampler.deterministic},
        "vocab_size": teacher.vocab_size,
    }


def check_matches(store: Store, attrs: dict) -> list[str]:
    """Why an existing store is not the one this spec would generate ([] if it is)."""
    problems = []
    if store.attrs.get("identity_hash") != attrs["identity_hash"]:
        problems += describe_difference(store.attrs.get("identity", {}), attrs["identity"])
        problems = problems or ["its recorded spec differs"]
    old_device = store.attrs.get("teacher", {}).get("device")
    if attrs["sampler"]["deterministic"] == "device" and old_device != attrs["teacher"]["device"]:
        # its samples depend on the teacher's numerics: mixing devices would mix two datasets
        problems.append(f"teacher device: {old_device} -> {attrs['teacher']['device']} "
                        f"(sampler '{attrs['sampler']['name']}' is deterministic per device)")
    old_fp = store.attrs.get("teacher", {}).get("fingerprint")
    if old_fp != attrs["teacher"]["fingerprint"]:
        problems.append(f"teacher fingerprint: {old_fp} -> {attrs['teacher']['fingerprint']}")
    return problems


def open_or_create(spec: Spec, dataset: str, attrs: dict, layout: Layout, overwrite: bool) -> Store:
    path = spec.store_path(dataset)
    error = None
    if dist.is_main():
        try:
            error = _prepare(path, spec, dataset, attrs, layout, overwrite)
        except Exception as e:  # every rank must hear of it, or the others wait forever
            error = f"{path}: {type(e).__name__}: {e}"
    error = dist.broadcast_object(error)
    if error:
        raise StoreError(error)
    dist.barrier()
    return Store.open(path, mode="r+")


def _prepare(path, spec: Spec, dataset: str, attrs: dict, layout: Layout, overwrite: bool) -> str | None:
    """Rank 0: check an existing store against the spec, or create it. Returns an error message."""
    if path.exists():
        try:
            problems = check_matches(Store.open(path, mode="r"), attrs)
        except StoreError as e:
            problems = [str(e)]
        if problems and not overwrite:
            return (f"{path} holds a different dataset than {spec.source} datasets.{dataset} would generate:\n  "
                    + "\n  ".join(problems)
                    + f"\nNothing was changed. Name a new dataset, or pass --overwrite to regenerate {path}.")
        if problems:
            shutil.rmtree(path)
    if not path.exists():
        Store.create(path, layout, attrs)
    return None


def targets_to_arrays(targets: Targets, dataset: str = "") -> dict[str, np.ndarray]:
    """Stored as float16 (values) and float32 (logsumexp); NaN, inf and logits past float16's range
    are refused."""
    values = targets.values if targets.is_topk else targets.logits
    peak = values.abs().max()
    if not torch.isfinite(peak) or (targets.is_topk and not torch.isfinite(targets.logsumexp).all()):
        where = f"datasets.{dataset}: " if dataset else ""
        raise StoreError(f"{where}the teacher's logits hold NaN or inf; nothing of this batch was stored")
    if peak > 65504:
        raise StoreError(f"teacher logits reach {peak.item():.4g}, past float16's range (65504)")
    if targets.is_topk:
        return {
            "topk_values": targets.values.half().cpu().numpy(),
            "topk_indices": targets.indices.cpu().numpy(),
            "logsumexp": targets.logsumexp.float().cpu().numpy(),
        }
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
    if positions == "last":
        out = out[torch.arange(len(out), device=out.device), inputs.lengths.to(out.device) - 1]
    rest = (~have).nonzero()[:, 0]
    if len(rest):  # filled in place: the batch's own tensor
        out[rest.to(out.device)] = teacher.logits(inputs.rows(rest).to(teacher.device), positions).to(out.device)
    return out


def concat(parts: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def owned_blocks(store: Store, layout: Layout, group: int | None) -> list[int]:
    """This rank's pending blocks: b % world, or, for a sampler that decodes fixed groups of samples
    together (`group`), by the group of the block's first row, so that each group is decoded by one
    rank (a block that straddles two groups shares the second with its neighbour's rank)."""
    rank, world = dist.rank(), dist.world()
    if not group or world == 1:
        return store.pending_blocks(rank, world)
    return [b for b in store.pending_blocks(0, 1) if layout.block_range(b)[0] // group % world == rank]


def generate(spec: Spec, dataset: str, builder: Builder | None = None, overwrite: bool = False,
             progress: bool = True, log=None) -> Store:
    dist.init()
    builder = builder or Builder(spec)
    ds = spec.datasets[dataset]
    teacher, sampler = builder.teacher, builder.sampler(dataset)
    layout = layout_for(spec, dataset, teacher.vocab_size, sampler.produces)
    attrs = store_attrs(spec, dataset, teacher, sampler)
    store = open_or_create(spec, dataset, attrs, layout, overwrite)
    if store.complete:
        return store

    blocks = owned_blocks(store, layout, getattr(sampler, "group", None))
    todo = sum(np.subtract(*reversed(layout.block_range(b))) for b in blocks)
    k = ds.topk if ds.logits == "topk" else None

    def forward(indices: list[int], inputs: Inputs) -> dict[str, np.ndarray]:
        logits = teacher_logits(teacher, inputs, ds.positions)
        targets = Targets.topk_of(logits, k) if k else Targets(logits=logits)
        return {"seed": np.array([sample_seed(ds.seed, i) for i in indices], dtype=np.int64),
                **inputs_to_arrays(inputs, layout), **targets_to_arrays(targets, dataset)}

    # (block, indices) of every teacher batch; a batch never spans two blocks
    batches = [(b, list(range(s, min(s + ds.batch_size, layout.block_range(b)[1]))))
               for b in blocks for s in range(*layout.block_range(b), ds.batch_size)]
    start, done, tokens = time.perf_counter(), 0, 0
    # the next batch is sampled, and finished blocks written, by idle-priority helpers (kdcore.threads)
    # while the teacher runs this batch; a sampler that runs the teacher itself is the teacher's work,
    # done here in turn at normal priority
    ahead = not getattr(sampler, "runs_teacher", False)
    with bar(progress and dist.is_main()) as pbar, background("sample") as sampling, background("write") as writer:
        task = pbar.add_task(f"generate {dataset}", total=todo, rate="")
        upcoming = sampling.submit(sampler.sample, batches[0][1], ds.seed) if batches and ahead else None
        parts, pending = [], None
        for i, (b, indices) in enumerate(batches):
            inputs = upcoming.result() if ahead else sampler.sample(indices, ds.seed)
            if ahead and i + 1 < len(batches):
                upcoming = sampling.submit(sampler.sample, batches[i + 1][1], ds.seed)
            part = forward(indices, inputs)
            parts.append(part)
            done += len(indices)
            tokens += int(part["length"].sum())
            elapsed = time.perf_counter() - start
            pbar.update(task, completed=done, rate=f"{done / elapsed:.1f} samples/s {tokens / elapsed:.0f} tok/s")
            if i + 1 == len(batches) or batches[i + 1][0] != b:  # block b is whole: write it
                if pending is not None:
                    pending.result()  # one block in flight: bounded memory, errors surface
                pending = writer.submit(store.write_block, b, concat(parts))
                parts = []
        if pending is not None:
            pending.result()
    elapsed = time.perf_counter() - start
    if log is not None and done:
        log.write("generate", {"dataset": dataset, "samples": int(done), "tokens": int(tokens),
                               "seconds": round(elapsed, 3), "samples_per_s": round(done / elapsed, 3),
                               "rank": dist.rank()})
    dist.barrier()
    if dist.is_main():
        store = Store.open(store.path, mode="r+")
        if store.committed().all():
            store.mark_complete()
    dist.barrier()
    return Store.open(store.path, mode="r")
