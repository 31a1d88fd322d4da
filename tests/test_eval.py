"""Evaluation: metrics against hand computations, the report, the end-to-end run (tiny and real teacher)."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch

from kdcore.eval.baselines import UnigramPredictor
from kdcore.eval.decoding import greedy_student
from kdcore.eval.metrics import Accumulator
from kdcore.eval.windows import text_windows
from kdcore.texts import HERE as TEXTS_DIR, read_text


def test_accumulator_matches_hand_computation():
    teacher = torch.tensor([[2.0, 1.0, 0.0, -1.0, -2.0, -3.0], [0.0, 3.0, 1.0, 0.0, 0.0, 0.0]])
    student = torch.tensor([[1.0, 2.0, 0.0, -1.0, -2.0, -3.0], [0.0, 2.0, 1.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([0, 2])
    acc = Accumulator()
    acc.add(student, teacher, target)
    r = acc.result()

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    kl, nll = 0.0, 0.0
    for t_row, s_row, y in zip(teacher.tolist(), student.tolist(), target.tolist()):
        p, q = softmax(t_row), softmax(s_row)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        nll += -math.log(q[y])
    assert r["top1_agreement"] == pytest.approx(0.5)  # row 0 argmax differs (1 vs 0), row 1 agrees
    assert r["kl_teacher_student"] == pytest.approx(kl / 2, rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(nll / 2), rel=1e-5)
    assert r["next_token_accuracy"] == 0.0
    assert r["distinct_predicted"] == 1
    # top-5 of 6 entries: row 0 both drop index 5 -> full overlap; row 1 ties broken the same way
    assert 0.8 <= r["top5_overlap"] <= 1.0


def test_per_position_metrics_are_the_overall_ones_split_by_window_index():
    """Agreement, KL and the real token's NLL per window index, over batches: each index's mean of
    the same per-position values the overall figures average."""
    torch.manual_seed(0)
    teacher, student = torch.randn(12, 7), torch.randn(12, 7)
    target, position = torch.randint(0, 7, (12,)), torch.arange(3).repeat(4)  # 4 windows of 3
    acc = Accumulator()
    acc.add(student[:6], teacher[:6], target[:6], position[:6])  # two batches, as evaluation adds them
    acc.add(student[6:], teacher[6:], target[6:], position[6:])
    r = acc.result()
    logp, logq = teacher.log_softmax(-1), student.log_softmax(-1)
    values = {"agreement": (logp.argmax(-1) == logq.argmax(-1)).double(),
              "kl": (logp.exp() * (logp - logq)).sum(-1).double(),
              "nll": -logq.gather(1, target[:, None])[:, 0].double()}
    for key, v in values.items():
        expected = [v[position == i].mean().item() for i in range(3)]
        assert r[f"{key}_by_position"] == pytest.approx(expected, rel=1e-5), key
    assert sum(r["kl_by_position"]) / 3 == pytest.approx(r["kl_teacher_student"], rel=1e-5)
    assert math.exp(sum(r["nll_by_position"]) / 3) == pytest.approx(r["perplexity"], rel=1e-5)
    assert "kl_by_position" not in Accumulator().result()  # no positions given: no split


def test_text_windows_are_consecutive_tokens_with_their_next_tokens():
    tokens = list(range(100))
    windows, nexts = text_windows(tokens, 8, 10)
    assert windows.shape == (10, 8)
    assert torch.equal(nexts, windows + 1)
    assert windows[0, 0] == 0 and nexts[-1, -1] == 99


def test_unigram_predicts_the_most_frequent_token():
    u = UnigramPredictor([3, 3, 3, 1, 2], vocab_size=5)
    logits = u(torch.zeros(2, 4, dtype=torch.long), torch.tensor([4, 2]))
    assert logits.shape == (2, 5)
    assert torch.equal(logits.argmax(-1), torch.tensor([3, 3]))
    assert torch.allclose(logits.exp().sum(-1), torch.ones(2))


def test_greedy_student_uses_a_sliding_window():
    calls = []

    class Echo(torch.nn.Module):  # predicts (last id + 1) % 10, records the windows it saw
        def forward(self, ids, lengths, positions="last"):
            calls.append((ids.clone(), lengths.clone()))
            last = ids[0, lengths[0] - 1]
            return torch.nn.functional.one_hot((last + 1) % 10, 10).float()[None]

    out = greedy_student(Echo(), [1, 2, 3], seq_len=4, steps=3)
    assert out == [4, 5, 6]
    assert calls[0][1].item() == 3 and calls[0][0][0, :3].tolist() == [1, 2, 3]
    assert calls[2][0][0].tolist() == [3, 4, 5, 0][:0] + [2, 3, 4, 5]  # last 4 tokens once the window is full


def test_no_two_shipped_texts_share_an_8_word_sequence():
    def grams(text, n=8):
        words = text.split()
        return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}

    names = sorted(p.name for p in TEXTS_DIR.glob("*.txt"))
    assert {"eval.txt", "eval_science_tales.txt", "reference.txt"} <= set(names)
    shingles = {name: grams(read_text(f"builtin:{name}")) for name in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not shingles[a] & shingles[b], f"{a} and {b} share a passage"


@pytest.mark.real_teacher
@pytest.mark.parametrize("name", ["eval.txt", "eval_science_tales.txt"])
def test_held_out_texts_fill_200_disjoint_windows_of_16_teacher_tokens(smollm2_teacher, name):
    # positions `all` scores every token of a window; 200 * 16 + 1 tokens keep the evenly spaced windows disjoint
    tokens = smollm2_teacher.tokenizer().encode(read_text(f"builtin:{name}"))
    windows, _ = text_windows(tokens, 16, 200)
    assert len(windows) == 200 and len(tokens) >= 200 * 16 + 1


def _kd(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kdcore", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_run_writes_a_report_with_baselines_and_compare_reads_it(tiny_spec, write_spec, tmp_path):
    path = write_spec(tiny_spec)
    result = _kd("run", str(path))
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((tmp_path / "runs" / "tiny" / "eval" / "report.json").read_text())
    assert set(report["results"]) == {"student", "untrained", "unigram"}
    for r in report["results"].values():
        assert 0 <= r["top1_agreement"] <= 1 and r["kl_teacher_student"] >= 0 and r["perplexity"] > 1
    assert report["results"]["unigram"]["distinct_predicted"] == 1
    assert report["samples"][0]["prompt"] == "The cat"
    for f in ("report.md", "metrics.png"):
        assert (tmp_path / "runs" / "tiny" / "eval" / f).exists()
    assert (tmp_path / "runs" / "tiny" / "training.png").exists()
    assert (tmp_path / "runs" / "tiny" / "eval" / "training.png").exists()
    # the evaluation summary goes through the metrics log (and so to kd_on_metrics plugins)
    records = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["stage"] == "eval"]
    assert len(evals) == 1
    assert evals[0]["student_top1_agreement"] == report["results"]["student"]["top1_agreement"]
    # a second run redoes nothing: the report stays byte-identical
    before = (tmp_path / "runs" / "tiny" / "eval" / "report.json").read_bytes()
    again = _kd("run", str(path))
    assert again.returncode == 0 and "evaluation up to date (skipped)" in again.stderr  # notes: stderr
    assert (tmp_path / "runs" / "tiny" / "eval" / "report.json").read_bytes() == before

    other = dict(tiny_spec, name="tiny2")
    other["phases"] = [dict(tiny_spec["phases"][0], epochs=1)]
    result = _kd("run", str(write_spec(other, "other.toml")))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "cmp"
    result = _kd("compare", str(tmp_path / "runs" / "tiny"), str(tmp_path / "runs" / "tiny2"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "compare.json").read_text())
    assert [r["label"] for r in rows] == ["tiny", "tiny2", "untrained (tiny)", "unigram (tiny)", "teacher"]
    assert (out / "compare.png").exists()
    # a damaged report is a clear error, not a traceback
    (tmp_path / "runs" / "tiny2" / "eval" / "report.json").write_text("{")
    result = _kd("compare", str(tmp_path / "runs" / "tiny"), str(tmp_path / "runs" / "tiny2"))
    assert result.returncode == 1 and "not a readable evaluation report" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_eval_without_a_trained_student_is_a_clear_error(tiny_spec, write_spec):
    result = _kd("eval", str(write_spec(tiny_spec)))
    assert result.returncode == 1
    assert "no trained student" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.real_teacher
def test_end_to_end_on_the_real_teacher(write_spec, tmp_path):
    """Generate, train, revert and evaluate on SmolLM2-135M: small, but every stage real."""
    spec = {
        "name": "real",
        "teacher": {"name": "smollm2"},
        "datasets": {"ids": {"samples": 48, "max_seq_len": 8, "batch_size": 16, "block_size": 16,
                             "positions": "all", "logits": "topk", "topk": 32,
                             "sampler": {"name": "random-ids"}}},
        "student": {"name": "llama", "hidden_size": 32, "layers": 1, "heads": 2},
        "phases": [{"dataset": "ids", "epochs": 2, "batch_size": 16, "lr": 3e-3, "losses": [{"name": "kl"}]}],
        "eval": {"windows": 16, "max_new_tokens": 4, "prompts": ["The capital of France is"]},
    }
    result = _kd("run", str(write_spec(spec)))
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((tmp_path / "runs" / "real" / "eval" / "report.json").read_text())
    assert report["positions"] == "all" and report["windows"] == 16
    assert report["results"]["student"]["positions_scored"] == 16 * 8
    # the real teacher is a fluent model: it continues the prompt with Paris
    assert "Paris" in report["samples"][0]["teacher"]
    assert report["teacher"]["perplexity"] < report["results"]["unigram"]["perplexity"]
    inspect = _kd("inspect", str(tmp_path / "store" / "ids"), "--json")
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["teacher"]["name"] == "smollm2"


@pytest.mark.slow
def test_study_runs_each_spec_once_draws_the_budget_and_compares_part_way(tiny_spec, write_spec, tmp_path):
    """`kd study` runs every spec of its folders, skips complete ones, plots a recipe over its
    budgets; `--complete-only` compares what has run, runs nothing, and names what it left out."""
    folder, out = tmp_path / "study", tmp_path / "out"
    folder.mkdir()
    for name, samples in (("a", 24), ("b", 48)):  # one recipe at two budgets
        spec = copy.deepcopy(tiny_spec)
        spec["name"], spec["recipe"] = f"tiny_{name}", "noise"
        spec["datasets"] = {f"noise_{name}": dict(spec["datasets"]["noise"], samples=samples)}
        spec["phases"][0]["dataset"] = f"noise_{name}"
        write_spec(spec, f"study/{name}.toml")
    result = _kd("study", str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr + result.stdout
    labels = [r["label"] for r in json.loads((out / "compare.json").read_text())]
    assert labels[:2] == ["tiny_a", "tiny_b"] and "teacher" in labels
    assert set(json.loads((out / "timings.json").read_text())) == {"tiny_a", "tiny_b"}
    assert (out / "budget.png").exists() and (out / "compare.md").exists()
    before = (tmp_path / "runs" / "tiny_a" / "eval" / "report.json").read_bytes()
    wrong = _kd("study", str(folder), "--out", str(out), "--complete-only", "--reference", "nois")
    assert wrong.returncode == 1 and "--reference nois: no spec of that recipe" in wrong.stderr
    shares = _kd("study", str(folder), "--out", str(out), "--complete-only", "--reference", "noise")
    assert shares.returncode == 0, shares.stderr
    rows = json.loads((out / "shares.json").read_text())["builtin:eval.txt"]
    assert [(r["label"], r["samples"]) for r in rows] == [("tiny_a", 24), ("tiny_b", 48)]  # each its own reference
    assert all(r["share"] == (1.0 if r["top1_agreement_in_context"] else None) for r in rows)  # no share of 0

    late = copy.deepcopy(tiny_spec)
    late["name"], late["datasets"] = "tiny_c", {"noise_c": late["datasets"]["noise"]}
    late["phases"][0]["dataset"] = "noise_c"
    write_spec(late, "study/c.toml")
    result = _kd("study", str(folder), "--out", str(out), "--complete-only")
    assert result.returncode == 0, result.stderr + result.stdout
    assert not (tmp_path / "runs" / "tiny_c").exists()  # nothing ran
    assert (tmp_path / "runs" / "tiny_a" / "eval" / "report.json").read_bytes() == before  # nor re-ran
    assert f"Not run yet (left out above): {folder / 'c.toml'}" in (out / "compare.md").read_text()
    assert "tiny_c" not in [r["label"] for r in json.loads((out / "compare.json").read_text())]

    # another session, its run folders and stores gone: the reports the study kept are its results
    import shutil

    tables = (out / "compare.md").read_text()
    shutil.rmtree(tmp_path / "runs"), shutil.rmtree(tmp_path / "store")
    result = _kd("study", str(folder), "--out", str(out), "--complete-only")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "tiny_a: no current run here; its recorded report" in " ".join(result.stderr.split())
    assert (out / "compare.md").read_text() == tables  # the same tables, from the kept reports
    # a spec changed since (another lr): its kept report is not its result any more
    changed = copy.deepcopy(tiny_spec)
    changed["name"], changed["recipe"] = "tiny_a", "noise"
    changed["datasets"] = {"noise_a": dict(changed["datasets"]["noise"], samples=24)}
    changed["phases"][0].update(dataset="noise_a", lr=5e-3)
    write_spec(changed, "study/a.toml")
    result = _kd("study", str(folder), "--out", str(out), "--complete-only")
    assert result.returncode == 0, result.stderr + result.stdout
    assert [r["label"] for r in json.loads((out / "compare.json").read_text())][0] == "tiny_b"
    assert f"Not run yet (left out above): {folder / 'a.toml'}, {folder / 'c.toml'}" in (out / "compare.md").read_text()


def test_compare_shows_each_distinct_untrained_student_once():
    """Runs that start from different students (a subclone, another width) each get their untrained
    row; runs that share one get a single row."""
    from kdcore.report.compare import compare_rows

    def report(name: str, untrained_kl: float) -> dict:
        metrics = lambda kl: {"top1_agreement": 0.1, "kl_teacher_student": kl, "perplexity": 100.0}  # noqa: E731
        results = {"student": metrics(3.0), "untrained": metrics(untrained_kl), "unigram": metrics(5.0)}
        return {"experiment": name, "text": "t", "seq_len": 16, "positions": "all",
                "texts": {"t": {"windows": 8, "results": results, "teacher": {"perplexity": 10.0, "distinct_predicted": 5}}}}

    rows = compare_rows([report("a_random", 7.0), report("b_random", 7.0), report("c_subclone", 13.0)])
    labels = [r["label"] for r in rows]
    assert labels == ["a_random", "b_random", "c_subclone", "untrained (a_random)", "untrained (c_subclone)",
                      "unigram (a_random)", "teacher"]
    assert [r["kl_teacher_student"] for r in rows[3:5]] == [7.0, 13.0]


def test_shares_set_each_run_against_the_reference_at_its_budget(tmp_path):
    """`kd study --reference RECIPE`: each run's agreement past the first position over the reference
    run's at the same budget, from unrounded figures; KL and perplexity past the first position, or
    over every position marked * for a report without the split; rows by budget, reference first."""
    from kdcore.report.compare import compare_rows
    from kdcore.report.shares import write_shares

    def report(name, recipe, samples, by_position, kl_split=True):
        student = {"top1_agreement": 0.5, "kl_teacher_student": 2.0, "perplexity": 50.0, "distinct_predicted": 9,
                   "agreement_by_position": by_position, "nll_by_position": [3.0] * len(by_position),
                   **({"kl_by_position": [4.0] + [1.5] * (len(by_position) - 1)} if kl_split else {})}
        unigram = {**student, "perplexity": 100.0, "nll_by_position": [4.0] * len(by_position)}
        return {"experiment": name, "recipe": recipe, "budget": {"samples": samples}, "text": "t", "seq_len": 3,
                "positions": "all", "texts": {"t": {"windows": 8, "teacher": {"perplexity": 10.0, "distinct_predicted": 5},
                                                    "results": {"student": student, "untrained": student, "unigram": unigram}}}}

    reports = [report("noise_1x", "noise", 100, [1.0, 0.2, 0.4]), report("real_1x", "real", 100, [1.0, 0.3, 0.6]),
               report("noise_4x", "noise", 400, [1.0, 0.35, 0.35], kl_split=False),
               report("real_4x", "real", 400, [1.0, 0.4, 0.5])]
    tables = {"t": compare_rows(reports, "t")}
    rows = write_shares(tmp_path, reports, tables, "real")["t"]
    assert [r["label"] for r in rows] == ["real_1x", "noise_1x", "real_4x", "noise_4x"]
    assert [r["share"] for r in rows] == pytest.approx([1.0, 0.3 / 0.45, 1.0, 0.35 / 0.45])
    assert rows[1]["kl_in_context"] == pytest.approx(1.5) and rows[3]["kl_in_context"] == 2.0  # over every position
    assert rows[1]["ppl_vs_unigram_in_context"] == pytest.approx(math.exp(-1.0))
    assert rows[3]["all_positions"] == ["kl_in_context"]
    md = (tmp_path / "shares.md").read_text()
    assert "| run | samples | top-1, 2+ token context | % of real | KL, 2+ token context |" in md
    assert "| noise_1x | 100 | 0.300 | 66.7% | 1.500 | 0.37 | 9 |" in md
    assert "| noise_4x | 400 | 0.350 | 77.8% | 2.000* |" in md
    assert json.loads((tmp_path / "shares.json").read_text())["t"][1]["label"] == "noise_1x"


def test_agreement_kl_and_perplexity_past_the_first_position_are_their_own_columns():
    """A window's first position has a one-token context; the columns leave it out (every position of
    a whole window counts the same). Perplexity past it is over the unigram's past it."""
    from kdcore.eval.metrics import teacher_row, with_derived_columns
    from kdcore.report.tables import markdown_table

    unigram = {"perplexity": 4.0, "nll_by_position": [5.0, 2.0, 2.0]}
    rows = with_derived_columns([
        {"label": "all positions", "top1_agreement": 0.4, "agreement_by_position": [1.0, 0.2, 0.4], "perplexity": 8.0,
         "kl_teacher_student": 2.0, "kl_by_position": [0.3, 2.5, 3.2], "nll_by_position": [0.0, 1.0, 2.0]},
        {"label": "last position only", "top1_agreement": 0.3, "perplexity": 4.0, "kl_teacher_student": 1.0},
        teacher_row({"perplexity": 2.0, "distinct_predicted": 5}),
    ], unigram)
    assert rows[0]["top1_agreement_in_context"] == pytest.approx(0.3)
    assert rows[0]["kl_in_context"] == pytest.approx(2.85)
    assert rows[0]["ppl_vs_unigram_in_context"] == pytest.approx(math.exp(1.5 - 2.0))
    assert not {"top1_agreement_in_context", "kl_in_context", "ppl_vs_unigram_in_context"} & set(rows[1])
    assert rows[2]["top1_agreement_in_context"] == 1.0 and rows[2]["kl_in_context"] == 0.0
    assert [r["ppl_vs_unigram"] for r in rows] == [2.0, 1.0, 0.5]
    header, _, first, second, _ = markdown_table(rows).splitlines()
    assert "| top-1 agreement | top-1, 2+ token context |" in header
    assert "| KL(teacher‖student) | KL, 2+ token context |" in header
    assert "| ppl / unigram | ppl / unigram, 2+ token context |" in header
    assert first.startswith("| all positions | 0.400 | 0.300 |") and second.startswith("| last position only | 0.300 |  |")
    assert "| 2.000 | 2.850 |" in first and "| 2.00 | 0.61 |" in first


def test_the_budget_plot_reads_past_the_first_position_where_every_run_has_it():
    """With every position scored, the budget plot's agreement, KL and perplexity / unigram are the
    tables' "2+ token context" columns (the study's reading); a run scored at its last position only,
    or a report from before KL was split by position, falls back to every position."""
    from kdcore.report.plots import _metric, _reading

    def report(by_position, kl=True):
        row = {"top1_agreement": 0.5, "perplexity": 10.0, "kl_teacher_student": 1.0,
               "agreement_by_position": by_position, "nll_by_position": [1.0] * len(by_position)}
        row.update({"kl_by_position": [3.0] + [0.5] * (len(by_position) - 1)} if kl else {})
        return {"texts": {"t": {"results": {"student": row, "unigram": {**row, "perplexity": 20.0}}}}}

    every = report([1.0, 0.2, 0.4])
    assert _reading([every], "t", "top1_agreement") == "top1_agreement_in_context"
    assert _reading([every], "t", "kl_teacher_student") == "kl_in_context"
    assert _reading([every], "t", "ppl_vs_unigram") == "ppl_vs_unigram_in_context"
    assert _metric(every, "t", "top1_agreement_in_context") == pytest.approx(0.3)
    assert _metric(every, "t", "kl_in_context") == pytest.approx(0.5)
    assert _metric(every, "t", "ppl_vs_unigram") == pytest.approx(0.5)
    assert _reading([every, report([0.5])], "t", "top1_agreement") == "top1_agreement"
    assert _reading([every, report([1.0, 0.2], kl=False)], "t", "kl_teacher_student") == "kl_teacher_student"
    assert _reading([every, report([1.0, 0.2], kl=False)], "t", "top1_agreement") == "top1_agreement_in_context"
