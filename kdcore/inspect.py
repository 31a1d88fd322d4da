"""`kd inspect`: what a store holds, read from the store alone (it describes itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdcore.store import Store, StoreDamaged

COLLAPSE_SHARE = 0.5  # one token the argmax of more than half the targets: collapsed


def target_diagnostics(store: Store, skip: set[int] = frozenset(), max_samples: int = 4096) -> dict:
    """The teacher's targets over the first committed blocks (not those in `skip`, the damaged):
    distinct argmax tokens, collapse, entropy, top-1 mass. A top-k store does not keep how its tail
    mass spreads over the other tokens, so its entropy is given as bounds: the tail as one token
    (lower) and spread evenly over the vocabulary's other tokens (upper)."""
    layout = store.layout
    committed = store.committed()
    argmax, entropy, upper, top1 = [], [], [], []
    unreadable, seen = [], 0
    for b in np.flatnonzero(committed).tolist():
        if seen >= max_samples:
            break
        if b in skip:
            continue
        try:
            data = store.read_block(b, ["length"] + (["logits"] if layout.logits == "dense" else ["topk_values", "topk_indices", "logsumexp"]))
        except StoreDamaged as e:  # reported by `damage()`; the rest still read
            unreadable.append(f"block {b}: {'; '.join(e.damage[b])}")
            continue
        lengths = data["length"].astype(np.int64)
        if layout.logits == "dense":
            logits = data["logits"].astype(np.float32)
            lse = _logsumexp(logits)
            logp = logits - lse[..., None]
            p = np.exp(logp)
            a = logits.argmax(-1)
            h = -(p * logp).sum(-1)
            hu = h
            t1 = p.max(-1)
        else:
            vals = data["topk_values"].astype(np.float32)
            logp = vals - data["logsumexp"][..., None]
            p = np.exp(logp)
            a = np.take_along_axis(data["topk_indices"].astype(np.int64), vals.argmax(-1)[..., None], -1)[..., 0]
            tail = np.clip(1 - p.sum(-1), 0, 1)
            tail_h = -np.where(tail > 0, tail * np.log(np.maximum(tail, 1e-12)), 0)  # the tail as one token
            h = -(p * logp).sum(-1) + tail_h
            hu = h + tail * np.log(max(layout.vocab_size - layout.topk, 1))  # ... or spread evenly
            t1 = p.max(-1)
        if layout.positions == "all":  # keep valid positions only
            valid = np.arange(layout.max_seq_len)[None, :] < lengths[:, None]
            a, h, hu, t1 = a[valid], h[valid], hu[valid], t1[valid]
        argmax.append(a.reshape(-1))
        entropy.append(h.reshape(-1))
        upper.append(hu.reshape(-1))
        top1.append(t1.reshape(-1))
        seen += len(lengths)
    if not argmax:
        return {"targets_read": 0, "unreadable": unreadable}
    a, h, t1 = np.concatenate(argmax), np.concatenate(entropy), np.concatenate(top1)
    values, counts = np.unique(a, return_counts=True)
    order = np.argsort(-counts)
    share = float(counts[order[0]] / len(a))
    return {
        "targets_read": int(len(a)),
        "samples_read": int(seen),
        "distinct_argmax": int(len(values)),
        "top_argmax": [[int(values[i]), int(counts[i])] for i in order[:5]],
        "top_argmax_share": share,
        "collapsed": share > COLLAPSE_SHARE,
        "entropy": _stats(h),  # exact for dense logits; for top-k, a lower bound
        "entropy_upper": _stats(np.concatenate(upper)),  # equal to it for dense logits
        "entropy_exact": layout.logits == "dense",
        "top1_mass": _stats(t1),
        "unreadable": unreadable,
    }


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
    damage = store.damage(deep=verify)
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


def print_report(r: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    status = "[green]complete[/green]" if r["complete"] else "[yellow]incomplete[/yellow] (resume with `kd generate`)"
    if r["damaged"]:
        status = f"[bold red]damaged[/bold red] ({len(r['damaged'])} block{'s' * (len(r['damaged']) > 1)}, listed below)"
    console.print(f"[bold]{r['path']}[/bold] — dataset '{r['name']}' of experiment '{r['experiment']}', {status}, "
                  f"blocks {r['blocks']['committed']}/{r['blocks']['total']}, created {r['created']}")
    t = r["teacher"] or {}
    s = r["spec"] or {}
    console.print(f"teacher: {t.get('name')} fingerprint {t.get('fingerprint')} ({t.get('dtype')}, {t.get('device')}); "
                  f"sampler: {s.get('sampler')}", highlight=False)
    lay = r["layout"]
    console.print(f"{lay['num_samples']} samples x {lay['max_seq_len']} positions, vocab {lay['vocab_size']}, "
                  f"positions={lay['positions']}, logits={lay['logits']}{' k=%d' % lay['topk'] if lay['logits'] == 'topk' else ''}, "
                  f"inputs={lay['inputs']} ({lay['produces']})")
    table = Table(title="arrays")
    for col in ("name", "shape", "dtype", "chunks", "codec"):
        table.add_column(col)
    for name, a in r["arrays"].items():
        table.add_row(name, str(tuple(a["shape"])), a["dtype"], str(tuple(a["chunks"])), a["codec"])
    console.print(table)
    ratio = r["bytes_per_sample_original_layout"] / max(1.0, r["bytes_per_sample_on_disk"])
    console.print(f"on disk: {r['bytes_on_disk'] / 2**20:.1f} MiB, {r['bytes_per_sample_on_disk'] / 1024:.1f} KiB per sample "
                  f"(original 2023 layout: {r['bytes_per_sample_original_layout'] / 1024:.1f} KiB per sample, {ratio:.1f}x larger)")
    h = r["length_histogram"]
    if h["counts"]:
        peak = max(h["counts"]) or 1
        console.print(f"sequence lengths (mean {h['mean']}):")
        for lo, hi, c in zip(h["edges"], h["edges"][1:], h["counts"]):
            console.print(f"  {lo + 0.5:5.0f}-{hi - 0.5:<5.0f} {'█' * round(30 * c / peak)} {c}")
    d = r["targets"]
    if d.get("targets_read"):
        e, u = d["entropy"], d["entropy_upper"]
        entropy = (f"entropy mean {e['mean']:.3f} (min {e['min']:.3f}, max {e['max']:.3f})" if d["entropy_exact"] else
                   f"entropy mean between {e['mean']:.3f} and {u['mean']:.3f} (top-k keeps no tail: lower bound with "
                   f"the tail as one token, upper with it spread evenly)")
        console.print(f"targets: {d['targets_read']} read, {d['distinct_argmax']} distinct argmax tokens; {entropy}; "
                      f"top-1 mass mean {d['top1_mass']['mean']:.3f}; most common argmax {d['top_argmax'][:3]}",
                      highlight=False)
        if d["collapsed"]:
            console.print(f"[bold red]warning: targets collapsed[/bold red] — token {d['top_argmax'][0][0]} is the teacher's "
                          f"argmax for {d['top_argmax_share']:.0%} of targets; a student will learn to predict one token")
    left = r["leftover_files"]
    if left["count"]:
        console.print(f"{left['count']} temporary files of interrupted writes ({left['bytes'] / 2**20:.1f} MiB, not "
                      f"counted above); the next `kd generate` removes them", highlight=False)
    if r["damaged"]:
        console.print(f"[bold red]damaged blocks[/bold red] (unreadable, or not what was written): "
                      f"{', '.join(r['damaged'])}; `kd generate --repair SPEC` regenerates exactly these", highlight=False)
        for b, reasons in r["damaged"].items():
            console.print(f"  block {b}: {escape('; '.join(reasons))}", highlight=False)
    elif not r["verified"]:
        console.print("checksums not verified (--no-verify): chunk files only checked for their size", highlight=False)
