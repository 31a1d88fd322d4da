"""Malformed specs through the real `kd validate`: exit code 1, no traceback, `file: key.path: message`.

Most cases run the CLI in this process (fast); a few run `python -m kdcore` in a subprocess, the
way a user meets it. Cases that need the teacher (vocabulary, positions) use the tiny random one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import kd_in_process as kd
import tomli_w





# --- editing the tiny spec --------------------------------------------------------------------------


def _walk(spec: dict, path: str):
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for p in parents:
        spec = spec[p]
    return spec, last


def put(path: str, value):
    """Set the key at `path` ("phases.0.lr") to `value`."""

    def edit(spec, folder):
        table, key = _walk(spec, path)
        table[key] = value

    return edit


def drop(path: str):
    def edit(spec, folder):
        table, key = _walk(spec, path)
        del table[key]

    return edit


def both(*edits):
    def edit(spec, folder):
        for e in edits:
            e(spec, folder)

    return edit


def raw(text: str | bytes):
    """Replace the whole file with this text."""
    return lambda spec, folder: text


def plugin_file(name: str, source: str):
    """Write a plugin file next to the spec and list it in `plugins`."""

    def edit(spec, folder):
        (folder / name).write_text(source)
        spec["plugins"] = [name]

    return edit


TOML_HEAD = 'name = "broken"\n[teacher]\nname = "tiny-llama"\nvocab_size = 64\n'
UNIFORM_IN_LENGTH_MIX = "datasets.noise.sampler.sampler"

# (id, edit, fragments the output must contain)
CASES = [
    # unknown keys, with "did you mean"
    ("unknown-top-level-key", put("nmae", "x"), ["nmae: unknown key — did you mean 'name'?"]),
    ("unknown-dataset-key", put("datasets.noise.sampels", 3),
     ["datasets.noise.sampels: unknown key — did you mean 'samples'?"]),
    ("unknown-phase-key", put("phases.0.lrr", 0.1), ["phases[0].lrr: unknown key — did you mean 'lr'?"]),
    ("unknown-eval-key", put("eval.windowz", 3), ["eval.windowz: unknown key — did you mean 'windows'?"]),
    ("unknown-sampler-param", put(f"{UNIFORM_IN_LENGTH_MIX}.hgih", 1.0),
     [f"{UNIFORM_IN_LENGTH_MIX}.hgih: unknown key — did you mean 'high'?"]),
    ("unknown-student-param", put("student.hiden_size", 8),
     ["student.hiden_size: unknown key — did you mean 'hidden_size'?"]),
    ("unknown-teacher-param", put("teacher.layer", 2), ["teacher.layer: unknown key — did you mean 'layers'?"]),
    ("unknown-loss-param", put("phases.0.losses.0.temprature", 2.0),
     ["phases[0].losses[0].temprature: unknown key — did you mean 'temperature'?"]),
    ("params-of-another-student", put("student.name", "crossbaby"),
     ["student.hidden_size: unknown key; available: vocab_size, word_embed"]),
    # wrong types
    ("samples-not-int", put("datasets.noise.samples", "ten"),
     ["datasets.noise.samples: Input should be a valid integer", "(got 'ten')"]),
    ("lr-not-number", put("phases.0.lr", "fast"), ["phases[0].lr: Input should be a valid number", "(got 'fast')"]),
    ("phases-not-list", put("phases", {"dataset": "noise"}), ["phases: Input should be a valid list"]),
    ("component-not-table", put("student", "llama"), ["student: Input should be a valid dictionary", "(got 'llama')"]),
    ("plugins-not-list", put("plugins", "my_sampler"), ["plugins: Input should be a valid list"]),
    ("spec-name-pattern", put("name", "my run"), ["name: String should match pattern", "(got 'my run')"]),
    # missing tables and keys
    ("no-teacher", drop("teacher"), ["teacher: required key is missing"]),
    ("no-datasets", drop("datasets"), ["datasets: required key is missing"]),
    ("no-phases", drop("phases"), ["phases: required key is missing"]),
    ("phase-without-losses", drop("phases.0.losses"), ["phases[0].losses: required key is missing"]),
    ("phase-with-empty-losses", put("phases.0.losses", []), ["phases[0].losses: List should have at least 1 item"]),
    ("dataset-without-sampler", drop("datasets.noise.sampler"), ["datasets.noise.sampler: required key is missing"]),
    ("component-without-name", drop("student.name"), ["student.name: required key is missing"]),
    ("nested-sampler-without-name", drop(f"{UNIFORM_IN_LENGTH_MIX}.name"),
     [f"{UNIFORM_IN_LENGTH_MIX}.name: required key is missing"]),
    ("empty-file", raw(""), ["name: required key is missing", "teacher: required key is missing",
                             "phases: required key is missing"]),
    # bad ranges
    ("samples-zero", put("datasets.noise.samples", 0), ["datasets.noise.samples: Input should be greater than 0"]),
    ("lr-negative", put("phases.0.lr", -1e-3), ["phases[0].lr: Input should be greater than 0 (got -0.001)"]),
    ("uniform-low-not-below-high",
     both(put(f"{UNIFORM_IN_LENGTH_MIX}.low", 10.0), put(f"{UNIFORM_IN_LENGTH_MIX}.high", -10.0)),
     [f"{UNIFORM_IN_LENGTH_MIX}.low: must be < high (got 10 >= -10)"]),
    ("full-fraction-above-one", put("datasets.noise.sampler.full_fraction", 1.5),
     ["datasets.noise.sampler.full_fraction: Input should be less than or equal to 1 (got 1.5)"]),
    ("kl-temperature-zero", put("phases.0.losses.0.temperature", 0),
     ["phases[0].losses[0].temperature: Input should be greater than 0"]),
    ("skew-kl-alpha-one", put("phases.0.losses", [{"name": "kl"}, {"name": "skew-kl", "alpha": 1.0}]),
     ["phases[0].losses[1].alpha: Input should be less than 1"]),
    ("clip-zero", put("phases.0.clip", 0), ["phases[0].clip: Input should be greater than 0"]),
    ("loss-weight-negative", put("phases.0.losses.0.weight", -1),
     ["phases[0].losses[0].weight: Input should be greater than or equal to 0"]),
    # unknown plugin names
    ("sampler-misspelled", put(f"{UNIFORM_IN_LENGTH_MIX}.name", "unifrom"),
     [f"{UNIFORM_IN_LENGTH_MIX}.name: unknown sampler 'unifrom' — did you mean 'uniform'? available:", "gaussian"]),
    ("student-misspelled", put("student.name", "lama"),
     ["student.name: unknown student 'lama' — did you mean 'llama'? available:"]),
    ("loss-misspelled", put("phases.0.losses.0.name", "kll"),
     ["phases[0].losses[0].name: unknown loss 'kll' — did you mean 'kl'? available:"]),
    ("teacher-misspelled", put("teacher.name", "tiny-lama"),
     ["teacher.name: unknown teacher 'tiny-lama' — did you mean 'tiny-llama'? available:"]),
    # TOML itself
    ("toml-syntax-error", raw(TOML_HEAD.replace("[teacher]", "[teacher")), ["TOML syntax error", "line 2"]),
    ("duplicate-dataset-names", raw(TOML_HEAD + "[datasets.noise]\nsamples = 1\n[datasets.noise]\nsamples = 2\n"),
     ["TOML syntax error", "('datasets', 'noise')", "twice"]),
    ("duplicate-key", raw(TOML_HEAD + "vocab_size = 32\n"), ["TOML syntax error", "line 5"]),
    ("not-utf8", raw(b'name = "\xff\xfe"\n'), ["not UTF-8 text"]),
    # across tables
    ("phase-names-undefined-dataset", put("phases.0.dataset", "nosie"),
     ["phases[0].dataset: no dataset 'nosie' — did you mean 'noise'?"]),
    ("kaiming-on-a-later-phase", lambda spec, folder: spec["phases"].append(
        dict(spec["phases"][0], init="kaiming")),
     ["phases[1].init: re-initialising would discard what earlier phases learned"]),
    # enums
    ("positions-invalid", put("datasets.noise.positions", "first"),
     ["datasets.noise.positions: Input should be 'last' or 'all' (got 'first')"]),
    ("logits-invalid", put("datasets.noise.logits", "sparse"),
     ["datasets.noise.logits: Input should be 'dense' or 'topk' (got 'sparse')"]),
    ("optimizer-invalid", put("phases.0.optimizer", "adam"),
     ["phases[0].optimizer: Input should be 'sgd' or 'adamw' (got 'adam')"]),
    ("eval-positions-invalid", put("eval.positions", "first"), ["eval.positions: Input should be 'last' or 'all'"]),
    # nested samplers
    ("length-mix-inner-unknown", put(f"{UNIFORM_IN_LENGTH_MIX}.name", "gausian"),
     [f"{UNIFORM_IN_LENGTH_MIX}.name: unknown sampler 'gausian' — did you mean 'gaussian'?"]),
    ("length-mix-inner-bad-param", put(f"{UNIFORM_IN_LENGTH_MIX}.low", "x"),
     [f"{UNIFORM_IN_LENGTH_MIX}.low: Input should be a valid number", "(got 'x')"]),
    ("mix-weights-length",
     put("datasets.noise.sampler", {"name": "mix", "samplers": [{"name": "uniform"}, {"name": "gaussian"}],
                                    "weights": [1.0]}),
     ["datasets.noise.sampler.weights: 1 given for 2 samplers"]),
    ("mix-inner-unknown",
     put("datasets.noise.sampler", {"name": "mix", "samplers": [{"name": "uniform"}, {"name": "gausian"}]}),
     ["datasets.noise.sampler.samplers[1].name: unknown sampler 'gausian' — did you mean 'gaussian'?"]),
    # plugin modules
    ("plugin-module-missing", put("plugins", ["no_such_kd_plugin"]),
     ["plugins: cannot import plugin module 'no_such_kd_plugin'"]),
    ("plugin-file-missing", put("plugins", ["missing_plugin.py"]),
     ["plugins: plugin file not found", "missing_plugin.py"]),
    ("plugin-file-raises-on-import", plugin_file("raising_plugin.py", "x = 1\nundefined_name + 1\n"),
     ["cannot import plugin file", "NameError: name 'undefined_name' is not defined (raising_plugin.py, line 2)"]),
    ("plugin-file-syntax-error", plugin_file("broken_plugin.py", "def f(:\n"),
     ["plugins: cannot import plugin file", "broken_plugin.py", "line 1"]),
    ("plugin-misspelled-hook", plugin_file("typo_plugin.py", "from kdcore.hookspecs import hookimpl\n\n@hookimpl\n"
                                                              "def kd_register_sampler(register):\n    pass\n"),
     ["plugins: plugin 'typo_plugin.py': unknown hook 'kd_register_sampler' — did you mean 'kd_register_samplers'?"]),
    # checks that need the teacher (tiny-llama: vocab 64, 256 positions)
    ("student-vocab-mismatch", put("student.vocab_size", 100),
     ["student", "vocab_size", "100 does not match the teacher's vocabulary (64)"]),
    ("random-ids-past-vocab", put("datasets.noise.sampler", {"name": "random-ids", "high": 100}),
     ["datasets.noise.sampler", "high", "100 is past the teacher's vocabulary (64)"]),
    ("nested-random-ids-past-vocab", put(UNIFORM_IN_LENGTH_MIX, {"name": "random-ids", "high": 65}),
     ["datasets.noise.sampler", "high", "65 is past the teacher's vocabulary (64)"]),
    ("max-seq-len-past-positions", put("datasets.noise.max_seq_len", 300),
     ["datasets.noise.max_seq_len: 300 is longer than the teacher's 256 positions"]),
    ("topk-past-vocab", both(put("datasets.noise.logits", "topk"), put("datasets.noise.topk", 100)),
     ["datasets.noise.topk: 100 is larger than the vocabulary (64)"]),
    ("length-mix-min-len-past-max-seq-len", put("datasets.noise.sampler.min_len", 7),
     ["datasets.noise.sampler", "min_len", "7 is longer than max_seq_len 6"]),
    ("student-heads", put("student.hidden_size", 17), ["student", "hidden_size (17) must be divisible by heads (2)"]),
]


@pytest.fixture
def bad_spec(tmp_path, tiny_spec):
    """bad_spec(edit) -> path of the tiny spec after `edit`, as a user would write it."""

    def make(edit) -> Path:
        spec = {**tiny_spec, "store_dir": str(tmp_path / "store"), "runs_dir": str(tmp_path / "runs")}
        text = edit(spec, tmp_path)
        if text is None:
            text = tomli_w.dumps(spec)
        path = tmp_path / "bad-spec.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    return make


def assert_user_error(code: int, output: str, path: Path, fragments: list[str]) -> None:
    assert code == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), output
    for line in lines:
        assert str(path) in line, f"an error line does not name the file:\n{output}"
    for fragment in fragments:
        assert f"{path}: " in output and fragment in output, f"missing {fragment!r} in:\n{output}"


def test_cases_are_enough_and_distinct():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) >= 30


def test_tiny_spec_is_valid(bad_spec):
    path = bad_spec(lambda spec, folder: None)
    code, output = kd("validate", path)
    assert code == 0, output
    assert "valid" in output and "teacher vocab 64" in output


@pytest.mark.parametrize("edit, fragments", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_malformed_spec(bad_spec, edit, fragments):
    path = bad_spec(edit)
    assert_user_error(*kd("validate", path), path, fragments)


@pytest.mark.parametrize("case", ["toml-syntax-error", "sampler-misspelled", "plugin-module-missing"])
def test_malformed_spec_in_a_subprocess(bad_spec, case):
    """`python -m kdcore` is the console script's `main()`: the same message, exit code 1, no traceback."""
    _, edit, fragments = next(c for c in CASES if c[0] == case)
    path = bad_spec(edit)
    proc = subprocess.run([sys.executable, "-m", "kdcore", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout == ""
    assert_user_error(proc.returncode, proc.stderr, path, fragments)


def test_every_problem_is_reported_at_once(bad_spec):
    edit = both(
        put("nmae", "x"),
        put("datasets.noise.samples", 0),
        put(f"{UNIFORM_IN_LENGTH_MIX}.low", 20.0),
        put("phases.0.lr", "fast"),
        put("phases.0.dataset", "nosie"),
        put("student.name", "lama"),
        put("phases.0.losses.0.temperature", -1.0),
    )
    path = bad_spec(edit)
    code, output = kd("validate", path)
    assert_user_error(code, output, path, [
        "nmae: unknown key",
        "datasets.noise.samples: Input should be greater than 0",
        f"{UNIFORM_IN_LENGTH_MIX}.low: must be < high (got 20 >= 10)",
        "phases[0].lr: Input should be a valid number",
        "phases[0].dataset: no dataset 'nosie'",
        "student.name: unknown student 'lama'",
        "phases[0].losses[0].temperature: Input should be greater than 0",
    ])
    assert len(output.strip().splitlines()) == 7, output


def test_every_problem_found_with_the_teacher_is_reported_at_once(bad_spec, tiny_spec):
    second = {**tiny_spec["datasets"]["noise"], "max_seq_len": 300,
              "sampler": {"name": "random-ids", "high": 100}}
    edit = both(
        put("student.vocab_size", 100),
        put("datasets.noise.logits", "topk"),
        put("datasets.noise.topk", 65),
        put("datasets.long", second),
    )
    path = bad_spec(edit)
    code, output = kd("validate", path)
    assert_user_error(code, output, path, [
        "100 does not match the teacher's vocabulary (64)",
        "datasets.noise.topk: 65 is larger than the vocabulary (64)",
        "datasets.long.max_seq_len: 300 is longer than the teacher's 256 positions",
    ])
    assert len(output.strip().splitlines()) == 3, output


def test_missing_and_unreadable_spec_files(tmp_path):
    code, output = kd("validate", tmp_path / "nope.toml")
    assert code == 1 and "nope.toml: no such spec file" in output and "Traceback" not in output
    code, output = kd("validate", tmp_path)
    assert code == 1 and f"{tmp_path}: cannot read the spec" in output and "Traceback" not in output


def test_valid_spec_resolves_defaults_and_counts_parameters(bad_spec):
    import json

    path = bad_spec(lambda spec, folder: None)
    code, output = kd("validate", path, "--json")
    assert code == 0, output
    info = json.loads(output)
    assert info["teacher_vocab"] == 64
    assert info["student_parameters"] > 0
    noise = info["spec"]["datasets"]["noise"]
    assert noise["positions"] == "last" and noise["logits"] == "dense"  # defaults filled in
    assert noise["sampler"]["sampler"] == {"name": "uniform", "low": -10.0, "high": 10.0}
    kl = {"name": "kl", "temperature": 1.0, "direction": "forward", "weight": 1.0}
    assert info["spec"]["phases"][0]["losses"] == [kl]


def _validate(write_spec, data):
    code, output = kd("validate", write_spec(data))
    return code, " ".join(output.split())


def test_fixed_length_student_on_all_positions_is_refused_at_validate(tiny_spec, write_spec):
    tiny_spec["student"] = {"name": "crossbaby", "word_embed": 4}
    tiny_spec["datasets"]["noise"]["positions"] = "all"
    code, output = _validate(write_spec, tiny_spec)
    assert code == 1
    assert "datasets.noise.positions: 'all' targets, but student 'crossbaby' predicts only last" in output


def test_temperature_with_topk_targets_is_refused_at_validate(tiny_spec, write_spec):
    tiny_spec["datasets"]["noise"]["logits"] = "topk"
    tiny_spec["datasets"]["noise"]["topk"] = 8
    tiny_spec["phases"][0]["losses"] = [{"name": "kl", "temperature": 2.0}]
    code, output = _validate(write_spec, tiny_spec)
    assert code == 1
    assert "phases[0].losses[0].temperature: must be 1 with top-k targets" in output


def test_evaluating_on_the_training_text_is_refused(tiny_spec, write_spec):
    tiny_spec["datasets"]["noise"]["sampler"] = {"name": "text-windows", "text": "builtin:eval.txt"}
    code, output = _validate(write_spec, tiny_spec)
    assert code == 1
    assert "datasets.noise.sampler.text: builtin:eval.txt is also the evaluation text (eval.text)" in output


def test_seed_inputs_that_would_rerun_the_teacher_are_refused(tiny_spec, write_spec):
    tiny_spec["datasets"]["noise"]["sampler"] = {
        "name": "mix", "samplers": [{"name": "teacher-generated"}, {"name": "uniform"}]}
    code, output = _validate(write_spec, tiny_spec)
    assert code == 1
    assert "datasets.noise.inputs: 'seed' would re-run the teacher's generation" in output
    tiny_spec["datasets"]["noise"]["inputs"] = "dense"
    code, output = _validate(write_spec, tiny_spec)
    assert code == 0, output
