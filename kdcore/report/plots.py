"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from kdcore.eval.metrics import with_derived_columns
from kdcore.run.metrics_log import read_metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(metrics: Path, out: Path) -> Path | None:
    records = read_metrics(metrics, "train")
    if not records:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    steps = [r["step"] for r in records]
    nan = float("nan")

    def series(key):  # phases can log different loss terms: a missing value is a gap
        v = [r.get(key) for r in records]
        return [nan if x is None else x for x in v]

    # every term any phase logged, in first-seen order
    terms = list(dict.fromkeys(k for r in records for k in r if k.startswith("loss_"))) or ["loss"]
    for key in terms:
        axes[0].plot(steps, series(key), label=key.removeprefix("loss_"), lw=1)
    if all(x > 0 for k in terms for x in series(k) if x == x):
        axes[0].set_yscale("log")
    axes[0].set_title("loss terms")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, series("lr"), lw=1)
    axes[1].set_yscale("log")
    axes[1].set_title("learning rate")
    axes[2].plot(steps, series("distinct_pred"), label="student", lw=1)
    axes[2].plot(steps, series("distinct_teacher"), label="teacher", lw=1)
    axes[2].set_title("distinct argmax per batch (collapse signal)")
    axes[2].legend(fontsize=7)
    phases = [r["step"] for a, r in zip(records, records[1:]) if r.get("phase") != a.get("phase")]
    for ax in axes:
        ax.set_xlabel("step")
        for s in phases:
            ax.axvline(s, color="grey", ls=":", lw=0.8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_bars(rows: list[dict], metrics: list[str], out: Path, title: str = "") -> Path:
    """One bar group per metric, one bar per row (run or baseline)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.8))
    axes = [axes] if len(metrics) == 1 else axes
    labels = [r["label"] for r in rows]
    for ax, m in zip(axes, metrics):
        vals = [r.get(m) if r.get(m) is not None else float("nan") for r in rows]
        ax.bar(range(len(rows)), vals, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_by_position(series: dict[str, list[float]], out: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, values in series.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=label)
    ax.set_xlabel("position in window")
    ax.set_ylabel("top-1 agreement with teacher")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _metric(report: dict, text: str, key: str, who: str = "student") -> float:
    results = report["texts"][text]["results"]
    return with_derived_columns([results[who]], results["unigram"])[0][key]


def recipe_of(report: dict) -> str:
    """The recipe a report's run measures (its spec's `recipe`; reports from before it: the name)."""
    return report.get("recipe") or report["experiment"]


IN_CONTEXT = {"top1_agreement": "top1_agreement_in_context", "kl_teacher_student": "kl_in_context",
              "ppl_vs_unigram": "ppl_vs_unigram_in_context"}


def _reading(reports: list[dict], text: str, key: str) -> str:
    """`key` past a window's first position where every run has it (the study's reading: at the first
    position the context is one token), else over every position."""
    def has(r):
        try:
            _metric(r, text, IN_CONTEXT[key])
            return True
        except KeyError:
            return False
    return IN_CONTEXT[key] if all(has(r) for r in reports) else key


def plot_budget(reports: list[dict], out: Path) -> Path:
    """Agreement, KL and perplexity / unigram against the training tokens (each past a window's first
    position where every run has it: `_reading`): one line per recipe, one row per evaluation text,
    the unigram baseline dashed."""
    plt = _plt()
    texts = [t for t in reports[0]["texts"] if all(t in r["texts"] for r in reports)]
    fig, axes = plt.subplots(len(texts), 3, figsize=(4.4 * 3, 3.4 * len(texts)), squeeze=False)
    recipes = list(dict.fromkeys(recipe_of(r) for r in reports))
    budgets = sorted({r["budget"]["tokens"] for r in reports})
    for i, text in enumerate(texts):
        metrics = [("top1_agreement", "top-1 agreement"), ("kl_teacher_student", "KL(teacher‖student)"),
                   ("ppl_vs_unigram", "perplexity / unigram")]
        for j, (key, title) in enumerate(metrics):
            key = _reading(reports, text, key)
            title += ", 2+ token context" if key.endswith("context") else ""
            ax = axes[i][j]
            for c, recipe in enumerate(recipes):
                runs = sorted((r for r in reports if recipe_of(r) == recipe),
                              key=lambda r: r["budget"]["tokens"])
                ax.plot([r["budget"]["tokens"] for r in runs], [_metric(r, text, key) for r in runs],
                        marker="o", ms=4, lw=1, color=f"C{c % 10}", label=recipe)
            ax.axhline(_metric(reports[0], text, key, "unigram"), ls="--", lw=1, color="grey", label="unigram")
            ax.set_xscale("log")
            ax.set_xticks(budgets, [f"{t / 1000:g}k" for t in budgets])  # the budgets run, not log-axis minor labels
            ax.minorticks_off()
            if key.startswith("ppl_vs_unigram"):  # ratios from ~0.2 to ~100: below and above 1 both readable
                ax.set_yscale("log")
            ax.set_xlabel("training tokens")
            ax.set_title(f"{title}\n{text}", fontsize=9)
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
