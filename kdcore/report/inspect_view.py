"""`kd inspect`'s report, printed: the store's arrays, size against the 2023 layout, completion,
damage, lengths and target diagnostics (`kdcore.store.inspect` makes the report)."""

from __future__ import annotations


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
