"""`kd inspect`: what a store holds, read from the store alone (it describes itself), as a report
(a dict, JSON-able); `kdcore.report.inspect_view` prints it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdcore.problems import KDError
from kdcore.store.integrity import damage as find_damage, damaged_blocks
from kdcore.store.store import Store

COLLAPSE_SHARE = 0.5  # one token the argmax of more than half the targets: collapsed


def target_diagnostics(store: Store, skip: set[int] = frozenset(), max_samples: int = 4096) -> dict:
    """The teacher's targets over the first committed blocks (not those in `skip`, the damaged):
    distinct argmax tokens, collapse, entropy, top-1 mass. A top-k store does not keep how its tail
    mass spreads over the other tokens, so its entropy is given as bounds: the tail as one token
    (lower) and spread evenly over the vocabulary's other tokens (upper)."""
    layout = store.layout
    columns, unreadable, seen = ([], [], [], []), [], 0
    for b in np.flatnonzero(store.committed()).tolist():
        if seen >= max_samples:
            break
        if b in skip:
            continue
        try:
            data = store.read_block(b, ["length"] + (["logits"] if layout.logits == "dense" else ["topk_values", "topk_indices", "logsumexp"]))
        except KDError as e:  # reported by `damage()`; the rest still read
            unreadable.append(str(e.problems[0]))
            continue
        lengths = data["length"].astype(np.int64)
        stats = _block_stats(data, layout)
        if layout.positions == "all":  # keep valid positions only
            valid = np.arange(layout.max_seq_len)[None, :] < lengths[:, None]
            stats = [x[valid] for x in stats]
        for column, x in zip(columns, stats):
            column.append(x.reshape(-1))
        seen += len(lengths)
    if not columns[0]:
        return {"targets_read": 0, "unreadable": unreadable}
    a, h, hu, t1 = (np.concatenate(c) for c in columns)
    values, counts = np.unique(a, return_counts=True)
    order = np.argsort(-counts)
    share = float(counts[order[0]] / len(a))
    return {
        "targets_read": int(len(a)), "samples_read": int(seen), "distinct_argmax": int(len(values)),
        "top_argmax": [[int(values[i]), int(counts[i])] for i in order[:5]], "top_argmax_share": share,
        "collapsed": share > COLLAPSE_SHARE,
        "entropy": _stats(h),  # exact for dense logits; for top-k, a lower bound
        "entropy_upper": _stats(hu),  # equal to it for dense logits
        "entropy_exact": layout.logits == "dense", "top1_mass": _stats(t1), "unreadable": unreadable,
    }


def _block_stats(data: dict, layout) -> list[np.ndarray]:
    """Per target: the argmax token, the entropy (lower bound for top-k), its upper bound, the top-1 mass."""
    if layout.logits == "dense":
        logits = data["logits"].astype(np.float32)
        logp = logits - _logsumexp(logits)[..., None]
        p = np.exp(logp)
        h = -(p * logp).sum(-1)
        return [logits.argmax(-1), h, h, p.max(-1)]
    vals = data["topk_values"].astype(np.float32)
    logp = vals - data["logsumexp"][..., None]
    p = np.exp(logp)
    argmax = np.take_along_axis(data["topk_indices"].astype(np.int64), vals.argmax(-1)[..., None], -1)[..., 0]
    tail = np.clip(1 - p.sum(-1), 0, 1)
    tail_h = -np.where(tail > 0, tail * np.log(np.maximum(tail, 1e-12)), 0)  # the tail as one token
    h = -(p * logp).sum(-1) + tail_h
    upper = h + tail * np.log(max(layout.vocab_size - layout.topk, 1))  # ... or spread evenly
    return [argmax, h, upper, p.max(-1)]


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(-1)
    return m + np.log(np.exp(x - m[..., None]).sum(-1))


def _stats(x: np.ndarray) -> dict:
    return {"mean": float(x.mean()), "min": float(x.min()), "median": float(np.median(x)), "max": float(x.max())}


def inspect_store(path: str | Path, verify: bool = True) -> dict:
    """What `kd inspect` reports. With `verify`, every committed block is read and checked against
    its checksums (the whole store is read); without, only a stat of its chunk files."""
    store = Store.open(path)
    layout = store.layout
    committed = store.committed()
    problems = find_damage(store, deep=verify)
    damage = {b: [p.message for p in problems if p.key == f"block {b}"] for b in damaged_blocks(problems)}
    arrays = {}
    for name, (shape, chunks, dtype) in layout.arrays().items():
        arr = store.array(name)
        arrays[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
                        "codec": ", ".join(type(c).__name__ for c in (arr.compressors or ())) or "none"}
    done_rows = sum(layout.block_range(b)[1] - layout.block_range(b)[0] for b in np.flatnonzero(committed))
    parts = [store.read_block(b, ["length"])["length"] for b in np.flatnonzero(committed).tolist() if b not in damage]
    lengths = np.concatenate(parts) if parts else np.array([], dtype=np.int32)
    leftovers = store.leftovers()
    disk = store.bytes_on_disk()
    hist_edges = np.linspace(0.5, layout.max_seq_len + 0.5, min(layout.max_seq_len, 16) + 1)
    hist, _ = np.histogram(lengths, bins=hist_edges)
    return {
        "path": str(store.path),
        "name": store.attrs.get("name"),
        "experiment": store.attrs.get("experiment"),
        "format_version": store.attrs.get("format_version"),
        "created": store.attrs.get("created"),
        "complete": store.complete,
        "spec": store.attrs.get("spec"),
        "teacher": store.attrs.get("teacher"),
        "sampler": store.attrs.get("sampler"),
        "layout": layout.__dict__,
        "arrays": arrays,
        "blocks": {"committed": int(committed.sum()), "total": int(layout.num_blocks)},
        "samples_written": int(done_rows),
        "bytes_on_disk": int(disk),
        "bytes_per_sample_on_disk": disk / max(1, done_rows),
        "bytes_per_sample_raw": layout.bytes_per_sample(),
        "bytes_per_sample_original_layout": layout.original_bytes_per_sample(),
        "length_histogram": {"edges": hist_edges.tolist(), "counts": hist.tolist(),
                             "mean": float(lengths.mean()) if len(lengths) else None},
        "leftover_files": {"count": len(leftovers), "bytes": sum(p.stat().st_size for p in leftovers)},
        "targets": target_diagnostics(store, set(damage)),
        "verified": verify,
        "damaged": {str(b): reasons for b, reasons in damage.items()},
        "unreadable": [f"block {b}: {'; '.join(reasons)}" for b, reasons in damage.items()],
    }
