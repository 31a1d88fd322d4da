"""The `kd` command line: cheap `--help`, `kd plugins`, and every shipped spec in experiments/."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import kd_in_process as kd
from rich.console import Console

from kdcore.report.console import reporter

from kdcore import cli
from kdcore.plugin.registry import KINDS, kind_plural, load_registry
from kdcore.config.load import load_spec

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((REPO / "experiments").rglob("*.toml"))
HEAVY = ("transformers", "zarr", "torch")




def test_kd_help_in_a_subprocess():
    script = Path(sys.executable).parent / "kd"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "kdcore"]
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("run", "generate", "train", "eval", "inspect", "validate", "plugins", "compare"):
        assert name in proc.stdout


def test_help_imports_neither_transformers_nor_zarr_nor_torch():
    commands = sorted(c.name or c.callback.__name__ for c in cli.app.registered_commands)
    snippet = f"""
import json, sys
from kdcore.cli import app
for args in (["--help"], *([name, "--help"] for name in {commands!r})):
    try:
        app(args, standalone_mode=False)
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


@pytest.fixture
def wide(monkeypatch):
    """The reporter's stdout as a 400-column console (one line per table row)."""
    console = Console(file=io.StringIO(), width=4000)
    monkeypatch.setattr(reporter, "out", console)
    return console


def test_plugins_lists_every_component_with_its_parameters(wide):
    code, _ = kd("plugins")
    assert code == 0
    text = wide.file.getvalue()
    registry = load_registry()
    for kind in KINDS:
        assert kind_plural(kind) in text
        for name in registry.names(kind):
            row = next((line for line in text.splitlines() if line.startswith(f"│ {name} ")), None)
            assert row is not None, f"{kind} '{name}' is not listed"
            assert "kd_plugins" in row
            for field, info in registry.get(kind, name).params.model_fields.items():
                shown = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
                assert f"{field}={shown}" in row, f"{kind} '{name}': {field} missing from {row}"
                if info.description:  # each field's description beside its default
                    assert f"{field}={shown} ({info.description})" in row
    assert "uniform in [min_len, S-1]" in text  # docstrings are printed as written, not as markup


def test_plugins_json_describes_every_field(wide):
    code, _ = kd("plugins", "--json")
    assert code == 0
    listing = json.loads(wide.file.getvalue())
    registry = load_registry()
    assert {(c["kind"], c["name"]) for c in listing} == {(k, n) for k in KINDS for n in registry.names(k)}
    zipf = next(c for c in listing if c["name"] == "zipf-ids")
    exponent = next(p for p in zipf["parameters"] if p["name"] == "exponent")
    assert exponent == {"name": "exponent", "type": "float", "required": False, "default": 1.0, "limits": "> 0",
                        "description": "Zipf's exponent (1: Zipf's law for words)"}
    assert zipf["from"] == "kd_plugins" and zipf["package"] is None and zipf["unusable"] is None and zipf["description"].startswith("Token ids drawn independently")
    assert zipf["description"].endswith("for low <= id < the vocabulary.")  # the whole first paragraph, on one line


def test_plugins_of_one_kind(wide):
    assert kd("plugins", "--kind", "loss")[0] == 0
    text = wide.file.getvalue()
    assert "losses" in text and "skew-kl" in text and "uniform" not in text
    code, output = kd("plugins", "--kind", "sampeler")
    assert code == 1 and "unknown kind 'sampeler' — did you mean 'sampler'?" in output


def test_there_are_experiments():
    assert EXPERIMENTS, "experiments/ has no *.toml spec"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[str(p.relative_to(REPO)) for p in EXPERIMENTS])
def test_experiment_spec_starts_with_a_comment(path):
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    assert first.startswith("#"), f"{path.name}: the first line should say what the spec does"


def _on_its_teacher(path: Path):
    """The spec as a test parameter, marked real_teacher where its teacher is SmolLM2."""
    import tomllib

    teacher = tomllib.loads(path.read_text()).get("teacher", {}).get("name")
    marks = [pytest.mark.real_teacher] if teacher == "smollm2" else []
    return pytest.param(path, marks=marks, id=str(path.relative_to(REPO)))


@pytest.fixture
def corpus_stand_in(monkeypatch):
    """`corpus:NAME` read from the shipped excerpt: the suite never downloads the corpus (`make corpus`)."""
    import kdcore.texts

    monkeypatch.setattr(kdcore.texts, "corpus_path", lambda name: kdcore.texts.HERE / "corpus_excerpt.txt")


@pytest.mark.parametrize("path", [_on_its_teacher(p) for p in EXPERIMENTS])
def test_experiment_spec_validates(path, corpus_stand_in):
    spec = load_spec(path)  # the schema, every component's name and parameters: no teacher needed
    local = getattr(spec.teacher.params, "path", None)
    code, output = kd("validate", path)  # and what needs the teacher: vocabulary, positions, student
    if local and not Path(local).expanduser().exists():
        # a spec for a teacher that lives elsewhere (Llama-2-7B): everything but the teacher validated
        # above; `kd validate` here must fail on the missing files alone, naming the key
        assert code == 1, output
        assert "teacher.path" in output and str(local) in output, output
        return
    assert code == 0, output
    assert f"{path}: valid" in " ".join(output.split())


@pytest.mark.parametrize("args", [["validate"], ["validat", "x.toml"], ["run", "x.toml", "--bogus"]],
                         ids=["missing-argument", "unknown-command", "unknown-option"])
def test_usage_mistakes_exit_1_with_a_message(args):
    code, output = kd(*args)
    assert code == 1
    assert "Usage:" in output and "Traceback" not in output


BLOCKED_IMPORT = """
import sys
sys.modules[{module!r}] = None  # as if the package were not installed
from kdcore.cli import main
sys.argv = ["kd", *sys.argv[1:]]
main()
"""


@pytest.mark.real_teacher
def test_a_missing_package_is_one_line_naming_it_and_how_to_install_it(tmp_path, write_spec, tiny_spec):
    """A GGUF teacher read without the `gguf` package (a fresh machine missing a dependency): one
    line naming the package and the pip command, exit 1, no traceback."""
    import os

    from kd_plugins.teachers import smollm2_gguf

    spec = write_spec({**tiny_spec, "teacher": {"name": "hf-causal-lm", "path": str(smollm2_gguf())}})
    env = {**os.environ, "KD_CACHE": str(tmp_path / "empty-cache")}  # nothing converted: the file is read
    proc = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT.format(module="gguf"), "validate", str(spec)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "the Python package 'gguf' is needed for reading SmolLM2" in proc.stderr
    assert "pip install gguf" in proc.stderr


def test_an_uninstalled_student_names_the_package_its_trained_run_came_from(tmp_path, write_spec, tiny_spec):
    """A spec whose student's package is gone (uninstalled, or another machine) while its run holds a
    student saved from that package: the problem names the package and the pip command."""
    from kdcore.run.artifact import GENERIC_KEY

    spec = write_spec({**tiny_spec, "student": {"name": "gone-student"}})
    code, output = kd("sample", spec, "The cat")
    assert code == 1 and "unknown student 'gone-student'" in output and "pip install" not in output
    reverted = tmp_path / "runs" / "tiny" / "reverted"
    reverted.mkdir(parents=True)
    record = {"format": 1, "student": "gone-student", "package": {"name": "kd-gone", "version": "1.2"}}
    (reverted / "config.json").write_text(json.dumps({GENERIC_KEY: record}))
    for command in (("sample", spec, "The cat"), ("eval", spec), ("validate", spec)):
        code, output = kd(*command)
        assert code == 1 and "Traceback" not in output, output
        flat = " ".join(output.split())
        assert "unknown student 'gone-student'" in flat and "pip install 'kd-gone==1.2'" in flat, flat
    (reverted / "config.json").write_text(json.dumps({GENERIC_KEY: {**record, "student": "another"}}))
    assert "pip install" not in kd("sample", spec, "The cat")[1]  # that run's student is not this one


@pytest.mark.parametrize("error, package", [
    (ModuleNotFoundError("No module named 'google'", name="google"), "protobuf"),
    (ImportError("LlamaTokenizerFast requires the protobuf library but it was not found in your environment."), "protobuf"),
    (ModuleNotFoundError("No module named 'sentencepiece'", name="sentencepiece"), "sentencepiece"),
])
def test_an_import_error_from_a_dependency_names_the_package(monkeypatch, tiny_spec, write_spec, error, package):
    from kdcore.stages import runner

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(runner.Runner, "plan", fails)
    code, output = kd("run", "--dry-run", write_spec(tiny_spec))
    assert code == 1 and "Traceback" not in output
    assert f"the Python package '{package}' is needed" in output and f"pip install {package}" in output


def test_an_import_error_of_our_own_code_keeps_its_traceback(monkeypatch, tiny_spec, write_spec):
    """A module of kdcore or kd_plugins that cannot be imported is a bug, not a missing package."""
    from kdcore.stages import runner

    def fails(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'kdcore.gone'", name="kdcore.gone")

    monkeypatch.setattr(runner.Runner, "plan", fails)
    with pytest.raises(ModuleNotFoundError):
        kd("run", "--dry-run", write_spec(tiny_spec))
