"""Generation: noise from the sampler through the frozen teacher into the store.

Blocks are split by rank (block b belongs to rank b % world, or, for a sampler that decodes groups
of samples, to the rank of the group of its first row), each written whole then committed;
a re-run redoes only uncommitted blocks. A store made from a different spec or teacher is refused,
never overwritten, unless `overwrite=True`.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from kdcore import dist
from kdcore.build import Builder
from kdcore.components import Inputs, Targets, last_positions, runs_teacher, sample_seed
from kdcore.errors import KDError, StoreError
from kdcore.locks import hold
from kdcore.progress import bar, console
from kdcore.spec import Spec, spec_hash
from kdcore.store import Layout, Store, describe_damage, human_bytes, input_checksum, is_store
from kdcore.threads import background


INPUT_CHECKSUMS = "input checksums"  # carried with a block's arrays into its commit record, not stored as one


def layout_for(spec: Spec, dataset: str, vocab_size: int, produces: str) -> Layout:
    ds = spec.datasets[dataset]
    return Layout(
        num_samples=ds.samples, max_seq_len=ds.max_seq_len, vocab_size=vocab_size,
        positions=ds.positions, logits=ds.logits, topk=ds.topk, inputs=ds.inputs,
        produces=produces, block_rows=min(ds.block_size, ds.samples),  # no block longer than the data
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


def open_or_create(spec: Spec, dataset: str, attrs: dict, layout: Layout, overwrite: bool, repair: bool,
                   held: ExitStack) -> Store:
    """The store to write, checked (rank 0, holding the store's lock in `held`), on every rank."""
    path = spec.store_path(dataset)
    error = None
    if dist.is_main():
        try:
            held.enter_context(hold(path, f"store {path}"))
            error = _prepare(path, spec, dataset, attrs, layout, overwrite, repair)
        except KDError as e:  # every rank must hear of it, or the others wait forever
            error = str(e)
        except Exception as e:
            error = f"{path}: {type(e).__name__}: {e}"
    error = dist.broadcast_object(error)
    if error:
        raise StoreError(error)
    dist.barrier()
    return Store.open(path, mode="r+")


def _prepare(path: Path, spec: Spec, dataset: str, attrs: dict, layout: Layout, overwrite: bool,
             repair: bool) -> str | None:
    """Rank 0, holding the lock: check an existing store against the spec, or create it; uncommit
    damaged blocks so that they are generated again. Returns an error message."""
    for stale in [*path.parent.glob(f".{path.name}.creating*"), *path.parent.glob(f".{path.name}.deleting*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a kill part-way through a create or delete
    if path.exists() and not is_store(path):
        if any(path.iterdir()):
            return (f"{path} exists and is not a LlamaKD store (no store metadata in it); nothing was changed, "
                    f"not even with --overwrite. Move it away, or change store_dir or the dataset's name in {spec.source}.")
        path.rmdir()
    problems = _differences(path, spec, dataset, attrs, layout, repair) if path.exists() else []
    if problems and not overwrite:
        return (f"{path} holds a different dataset than {spec.source} datasets.{dataset} would generate:\n  "
                + "\n  ".join(problems)
                + f"\nNothing was changed. Name a new dataset, or pass --overwrite to regenerate {path}.")
    error = space_error(spec, {dataset: layout}, replacing={dataset} if problems else set())
    if error:  # before anything is deleted or created
        return error
    if problems:
        _delete(path)
    if path.exists():
        _mend(Store.open(path, mode="r+"), repair)
    else:
        Store.create(path, layout, attrs)
    return None


def missing(path: Path, layout: Layout, replacing: bool = False) -> tuple[int, int]:
    """(samples, uncompressed bytes) a store at `path` still lacks: all of it where none is, or where
    it is to be replaced. Bytes count whole blocks: a chunk is written whole, the last one too."""
    blocks = list(range(layout.num_blocks))
    if is_store(path) and not replacing:
        try:
            store = Store.open(path)
            blocks = np.flatnonzero(~store.committed()).tolist()  # the flags: `complete` is set after them
        except KDError:
            pass  # unreadable: counted whole, as --overwrite or --repair would write it
    rows = sum(np.subtract(*reversed(layout.block_range(b))) for b in blocks)
    return int(rows), len(blocks) * layout.block_rows * layout.bytes_per_sample()


def space_error(spec: Spec, layouts: dict[str, Layout], replacing: set[str] = frozenset()) -> str | None:
    """Refuse before any teacher work when what these datasets' stores still lack, uncompressed, is
    more than the free space on their disk: a full disk hours into a run (or into its second
    dataset) stops it with nothing to show for the rest. A store in `replacing` (--overwrite) is
    counted whole, and the space its deletion frees as free."""
    disks: dict[int, tuple[Path, list[str], int]] = {}
    for name, layout in layouts.items():
        path = spec.store_path(name)
        rows, need = missing(path, layout, name in replacing)
        if name in replacing:
            need -= sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if need > 0:
            where = next(p for p in (path, *path.parents) if p.exists())
            disk = os.stat(where).st_dev
            at, parts, total = disks.get(disk, (where, [], 0))
            parts.append(f"datasets.{name}: {human_bytes(need)} for {rows} samples in {path}")
            disks[disk] = (at, parts, total + need)
    for at, parts, total in disks.values():
        free = shutil.disk_usage(at).free
        if total > free:
            return (f"not enough disk space for {spec.source}: " + "; ".join(parts)
                    + f" (uncompressed, up to {human_bytes(total)} in all), and {human_bytes(free)} is free on that "
                    f"disk. Nothing was generated, deleted or created. Free space, or set store_dir "
                    f"in {spec.source} to a larger disk.")
    return None


def _differences(path: Path, spec: Spec, dataset: str, attrs: dict, layout: Layout, repair: bool) -> list[str]:
    """Why the store at `path` is not this dataset's ([] if it is); with `repair`, its unreadable
    metadata rewritten first where it provably is."""
    if repair:
        restored = Store.restore_metadata(path, layout, attrs)
        if restored:
            console.print(f"{path}: metadata rewritten: {', '.join(restored)}", highlight=False)
    try:
        return Store.open(path, mode="r").differences(spec, dataset, attrs)
    except StoreError as e:
        return [str(e)]


def _mend(store: Store, repair: bool) -> None:
    """Remove leftovers of killed writes; uncommit blocks that are not intact (a stat per chunk
    file; with `repair`, every block read and checked), for this run to generate them again."""
    store.remove_leftovers()
    damage = store.damage(deep=repair)
    if damage:
        console.print(f"{describe_damage(store.path, damage)}\nregenerating {'it' if len(damage) == 1 else 'them'}",
                      highlight=False)
        store.uncommit(list(damage))
    elif repair:
        console.print(f"{store.path}: every committed block checked: none damaged", highlight=False)


def _delete(path: Path) -> None:
    """Delete a store: renamed aside first, so a kill part-way leaves no half-deleted store in place."""
    aside = path.with_name(f".{path.name}.deleting{os.getpid()}")
    os.replace(path, aside)
    shutil.rmtree(aside)


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


def generate(spec: Spec, dataset: str, builder: Builder | None = None, overwrite: bool = False,
             progress: bool = True, log=None, repair: bool = False) -> Store:
    """Generate (or resume, or with `repair` verify and mend) one dataset's store. Rank 0 holds the
    store's lock throughout: another `kd generate` on it stops at once, naming this process."""
    with ExitStack() as held:
        return _generate(spec, dataset, builder, overwrite, progress, log, repair, held)


def _generate(spec: Spec, dataset: str, builder: Builder | None, overwrite: bool, progress: bool, log,
              repair: bool, held: ExitStack) -> Store:
    dist.init()
    builder = builder or Builder(spec)
    ds = spec.datasets[dataset]
    teacher, sampler = builder.teacher, builder.sampler(dataset)
    layout = layout_for(spec, dataset, teacher.vocab_size, sampler.produces)
    attrs = store_attrs(spec, dataset, teacher, sampler)
    store = open_or_create(spec, dataset, attrs, layout, overwrite, repair, held)
    if store.complete:
        return store

    blocks = owned_blocks(store, layout, getattr(sampler, "group", None))
    todo = sum(np.subtract(*reversed(layout.block_range(b))) for b in blocks)
    k = ds.topk if ds.logits == "topk" else None

    def forward(indices: list[int], inputs: Inputs) -> dict[str, np.ndarray]:
        logits = teacher_logits(teacher, inputs, ds.positions)
        targets = Targets.topk_of(logits, k) if k else Targets(logits=logits)
        part = {"seed": np.array([sample_seed(ds.seed, i) for i in indices], dtype=np.int64),
                **inputs_to_arrays(inputs, layout), **targets_to_arrays(targets, dataset)}
        if layout.regenerates_inputs:  # training regenerates them: record what they were
            part[INPUT_CHECKSUMS] = np.array([input_checksum(row) for row in inputs.soft], dtype=np.uint32)
        return part

    # (block, indices) of every teacher batch; a batch never spans two blocks
    batches = [(b, list(range(s, min(s + ds.batch_size, layout.block_range(b)[1]))))
               for b in blocks for s in range(*layout.block_range(b), ds.batch_size)]
    start, done, tokens = time.perf_counter(), 0, 0
    # the next batch is sampled, and finished blocks written, by idle-priority helpers (kdcore.threads)
    # while the teacher runs this batch; a sampler that runs the teacher itself is the teacher's work,
    # done here in turn at normal priority
    ahead = not runs_teacher(sampler)
    with bar(progress and dist.is_main()) as pbar, background("sample") as sampling, background("write") as writer:
        task = pbar.add_task(f"generate {dataset}", total=todo, rate="")
        upcoming = sampling.submit(sampler.sample, batches[0][1], ds.seed) if batches and ahead else None
        parts, pending = [], None
        for i, (b, indices) in enumerate(batches):
            inputs = upcoming.result() if ahead else sampler.sample(indices, ds.seed)
            if ahead and i + 1 < len(batches):
                upcoming = sampling.submit(sampler.sample, batches[i + 1][1], ds.seed)
            part = forward(indices, inputs)
            del inputs  # a view of a sampler's cached group: let the next group reuse its memory
            parts.append(part)
            done += len(indices)
            tokens += int(part["length"].sum())
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
