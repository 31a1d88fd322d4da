"""A plugin author's own mistakes, each one line naming the component, its plugin, its place in the
spec and the failing line of the plugin's code (exit 1, no traceback; `--traceback` adds it), found
by `kd validate` and `kd run` before any teacher work where a trial can show them; and what a
plugin's package leaves behind: broken or clashing installed plugins skipped with a warning,
reverted folders that name the package and carry the tokenizer."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import textwrap

import pytest

from conftest import kd_in_process as kd

HEADER = "import torch\nfrom pydantic import Field\nfrom kdcore.api import Inputs, Params, SoftSampler, hookimpl, valid_rows\n"

STUDENT = HEADER + textwrap.dedent('''
    class P(Params):
        """A linear student."""
        bias: bool = True

    class Flat(torch.nn.Module):
        positions = ("last", "all")

        def __init__(self, params, ctx):
            super().__init__()
            self.V, self.params = ctx.vocab_size, params
            self.embed = torch.nn.Linear(ctx.vocab_size, 8)
            self.head = torch.nn.Linear(8, ctx.vocab_size)

        def forward(self, inputs, positions="last"):
            out = self.head(self.embed(inputs.as_soft(self.V)))
            return SHAPE

        def revert(self):
            return Reverted(self)

    class Reverted(torch.nn.Module):
        positions, max_seq_len = ("last", "all"), None

        def __init__(self, s):
            super().__init__()
            self.embedding = torch.nn.Embedding.from_pretrained((s.embed.weight.T + BIAS).detach().clone())
            self.head = s.head

        def forward(self, ids, lengths, positions="last"):
            out = self.head(self.embedding(ids))
            return out if positions == "all" else out[torch.arange(len(lengths)), lengths - 1]

    @hookimpl
    def kd_register_students(register):
        register("flat", Flat, P)
''')

LOSS = HEADER + textwrap.dedent('''
    class P(Params):
        """A loss."""

    class Broken:
        def __init__(self, params, ctx):
            self.params = params

        def __call__(self, student_logits, targets, mask):
            student, teacher = valid_rows(student_logits, targets, mask)
            return VALUE

    @hookimpl
    def kd_register_losses(register):
        register("broken", Broken, P)
''')


@pytest.fixture
def plugin_spec(tiny_spec, write_spec, tmp_path, monkeypatch):
    """plugin_spec(module_source, edit) -> the spec path; the module is written beside it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    written = []

    def make(source: str, edit) -> str:
        name = f"kd_author_{len(written)}"
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        data = {**tiny_spec, "plugins": [name]}
        data["datasets"]["noise"]["positions"] = "all"
        edit(data)
        return write_spec(data)

    yield make
    for name in written:
        sys.modules.pop(name, None)


def student_source(shape="out if positions == 'all' else out[:, -1]", bias="s.embed.bias"):
    return STUDENT.replace("SHAPE", shape).replace("BIAS", bias)


def one_line(output: str) -> str:
    assert "Traceback" not in output
    return " ".join(output.split())


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_student_of_the_wrong_shape_is_named_with_its_line(plugin_spec, command):
    path = plugin_spec(student_source(shape="out[:, :2]"), lambda d: d.update(student={"name": "flat"}))
    code, output = kd(command, path)
    said = one_line(output)
    assert code == 1
    assert f"{path}: student: student 'flat' (from kd_author_0) broke its contract: forward (positions 'all') must " \
           "give logits (2, 6, 64), got (2, 2, 64)" in said
    assert not (path.parent / "store" / "noise").exists()  # found before any teacher work



def test_every_position_kind_a_student_declares_is_tried(plugin_spec):
    """Evaluation decodes with 'last' whatever the datasets use: a student that ignores `positions`
    is refused by validate, not after training."""
    path = plugin_spec(student_source(shape="out"), lambda d: d.update(student={"name": "flat"}))
    code, output = kd("validate", path)
    assert code == 1
    assert "student 'flat' (from kd_author_0) broke its contract: forward (positions 'last') must give logits " \
           "(2, 64), got (2, 6, 64)" in one_line(output)


def test_a_student_that_fails_only_in_training_mode_is_found_by_validate(plugin_spec):
    shape = "self.dropout(out) if self.training else (out if positions == 'all' else out[:, -1])"
    source = student_source(shape=shape)
    path = plugin_spec(source, lambda d: d.update(student={"name": "flat"}))
    code, output = kd("validate", path)
    line = next(i for i, text in enumerate(source.splitlines(), 1) if "self.dropout(out)" in text)
    assert code == 1
    said = one_line(output)
    assert "student 'flat' (from kd_author_0) failed in forward() in training mode: AttributeError: 'Flat' object " \
           "has no attribute 'dropout' (" in said and f"kd_author_0.py:{line})" in said


def test_a_student_failing_in_evaluation_is_named_with_its_line(plugin_spec):
    """Only the reverted student reads real text; one that breaks on batches larger than the trial's
    is one attributed line after training, not a traceback."""
    source = student_source().replace("out = self.head(self.embedding(ids))",
                                      "out = self.head(self.embedding(ids * 1000 if len(ids) > 2 else ids))")
    path = plugin_spec(source, lambda d: d.update(student={"name": "flat"}))
    code, output = kd("run", path)
    line = next(i for i, text in enumerate(source.splitlines(), 1) if "ids * 1000" in text)
    said = one_line(output)
    assert code == 1
    assert "student 'flat' (from kd_author_0) failed in evaluation on real text: IndexError" in said
    assert f"kd_author_0.py:{line})" in said


def test_a_revert_that_drops_the_bias_is_noticed(plugin_spec):
    """The shipped student must be the one trained: the reverted model against the float one on one-hot ids."""
    path = plugin_spec(student_source(bias="0"), lambda d: d.update(student={"name": "flat"}))
    code, output = kd("validate", path)
    assert code == 1
    assert "student 'flat' (from kd_author_0) revert() gives another function: on the same ids" in one_line(output)


def test_an_exception_in_a_student_names_the_plugin_file_and_line(plugin_spec, tmp_path):
    source = student_source(shape="out * self.params.biass")  # a parameter read under a wrong name
    path = plugin_spec(source, lambda d: d.update(student={"name": "flat"}))
    code, output = kd("validate", path)
    said = one_line(output)
    line = source.splitlines().index("        return out * self.params.biass") + 1
    assert code == 1
    assert f"{path}: student: student 'flat' (from kd_author_0) failed in forward(): AttributeError: 'P' object " \
           f"has no attribute 'biass' (kd_author_0.py:{line})" in said or f"kd_author_0.py:{line})" in said
    code, output = kd("--traceback", "validate", path)
    assert code == 1 and "Traceback (most recent call last)" in output and "biass" in output


@pytest.mark.parametrize("value, said", [
    ("(student - teacher.logits).pow(2).mean(-1)", "on dense targets it must give a finite scalar, got (12,)"),
    ("(student.detach() - teacher.logits).pow(2).mean()", "on dense targets its value has no gradient to the student"),
])
def test_a_loss_that_is_no_scalar_with_a_gradient_is_refused(plugin_spec, value, said):
    path = plugin_spec(LOSS.replace("VALUE", value), lambda d: d["phases"][0].update(losses=[{"name": "broken"}]))
    for command in ("validate", "run"):
        code, output = kd(command, path)
        assert code == 1
        assert f"{path}: phases[0].losses[0]: loss 'broken' (from kd_author_0) broke its contract: {said}" in one_line(output)


@pytest.mark.parametrize("sample, said", [
    ("Inputs(lengths=torch.full((len(indices),), self.S), ids=torch.zeros(len(indices), self.S))",
     "broke its contract: ids must be (4, 6) int64, got (4, 6) float32"),
    ("Inputs(lengths=torch.full((len(indices),), self.S), ids=torch.zeros(len(indices), 2, dtype=torch.long))",
     "broke its contract: ids must be (4, 6) int64, got (4, 2) int64"),
    ("Inputs(lengths=torch.full((len(indices),), self.S), ids=torch.randint(0, 60, (len(indices), self.S)))",
     "(from kd_author_0) is not a pure function of (seed, index): sample 0 differs when drawn again; draw every "
     "random number from the sample's own generator"),
])
def test_a_sampler_that_breaks_its_contract_fails_validate_and_run(plugin_spec, sample, said):
    source = HEADER + textwrap.dedent(f'''
        class P(Params):
            """ids"""

        class S:
            produces, deterministic = "ids", "pure"

            def __init__(self, params, ctx):
                self.S = ctx.max_seq_len

            def sample(self, indices, seed):
                return {sample}

        @hookimpl
        def kd_register_samplers(register):
            register("odd", S, P)
    ''')
    path = plugin_spec(source, lambda d: d["datasets"]["noise"].update(sampler={"name": "odd"}))
    for command in ("validate", "run"):
        code, output = kd(command, path)
        assert code == 1 and said in one_line(output), output
        assert "datasets.noise.sampler" in output
    assert not (path.parent / "store" / "noise").exists()


def test_a_plugin_module_whose_hooks_lack_hookimpl_is_warned_about(plugin_spec):
    source = "def kd_register_samplers(register):\n    pass\n"
    path = plugin_spec(source, lambda d: None)
    code, output = kd("validate", path)
    assert code == 0, output
    assert "warning: plugin 'kd_author_0' defines kd_register_samplers without @hookimpl" in one_line(output)



def test_one_hook_without_hookimpl_among_marked_ones_is_named_where_its_component_is_missing(plugin_spec):
    """The copy-paste slip: the student's hook is marked, the loss's is not; the spec naming the loss
    is told why it is unknown."""
    source = student_source() + LOSS.replace("VALUE", "(student - teacher.logits).pow(2).mean()").replace(
        "@hookimpl\ndef kd_register_losses", "def kd_register_losses")
    path = plugin_spec(source, lambda d: (d.update(student={"name": "flat"}),
                                          d["phases"][0].update(losses=[{"name": "broken"}])))
    code, output = kd("validate", path)
    said = one_line(output)
    assert code == 1 and "unknown loss 'broken'" in said
    assert "plugin 'kd_author_0' defines kd_register_losses without @hookimpl (kdcore.api.hookimpl): never called" in said


def test_a_plugin_import_error_points_into_the_plugin_with_the_closest_api_name(plugin_spec):
    path = plugin_spec("import torch\nfrom kdcore.api import Hookimpl\n", lambda d: None)
    code, output = kd("validate", path)
    said = one_line(output)
    assert code == 1 and "cannot import name 'Hookimpl' from 'kdcore.api'" in said
    assert "did you mean 'hookimpl'?" in said and "kd_author_0.py:2)" in said


def test_traceback_may_follow_the_command(plugin_spec):
    path = plugin_spec(student_source(shape="out * self.params.biass"), lambda d: d.update(student={"name": "flat"}))
    code, output = kd("validate", "--traceback", path)
    assert code == 1 and "Traceback (most recent call last)" in output and "biass" in output


def test_validate_names_the_components_it_tried(plugin_spec):
    path = plugin_spec(student_source(), lambda d: d.update(student={"name": "flat"}))
    code, output = kd("validate", path)
    assert code == 0 and "tried on tiny inputs: student 'flat' (from kd_author_0)" in one_line(output)

@pytest.fixture
def installed(tmp_path, monkeypatch):
    """installed(module, source, entry point): a package on sys.path with a `kd` entry point."""
    def install(module: str, source: str, entry_point: str) -> None:
        (tmp_path / f"{module}.py").write_text(source)
        info = tmp_path / f"{module.replace('_', '-')}-1.2.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.2\n")
        (info / "entry_points.txt").write_text(f"[kd]\n{entry_point} = {module}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    for module in [m for m in sys.modules if m.startswith("kd_pkg_")]:
        del sys.modules[module]


def test_a_broken_installed_plugin_is_skipped_unless_a_spec_names_its_components(installed, tiny_spec, write_spec, monkeypatch):
    installed("kd_pkg_broken", "import no_such_dependency\n", "broken")
    code, output = kd("validate", write_spec(tiny_spec))
    said = one_line(output)
    assert code == 0 and "warning: installed plugin 'broken' (kd-pkg-broken 1.2) is skipped: No module named " \
                          "'no_such_dependency'" in said
    tiny_spec["datasets"]["noise"]["sampler"] = {"name": "from-broken"}
    code, output = kd("validate", write_spec(tiny_spec, "uses.toml"))
    assert code == 1 and "unknown sampler 'from-broken'" in one_line(output)
    assert "installed plugins that failed to load, which may provide it: 'broken' from kd-pkg-broken 1.2" in one_line(output)
    monkeypatch.setenv("KD_DISABLE_PLUGINS", "kd-pkg-broken")
    code, output = kd("validate", write_spec(tiny_spec | {"datasets": {"noise": {**tiny_spec["datasets"]["noise"],
                                                                                  "sampler": {"name": "random-ids"}}}}, "off.toml"))
    assert code == 0 and "warning" not in output


def test_an_installed_plugin_that_clashes_is_skipped_unless_its_name_is_used(installed, tiny_spec, write_spec):
    installed("kd_pkg_clash", "from kdcore.api import Params, hookimpl\nfrom kd_plugins.samplers import RandomIds\n\n"
                              "@hookimpl\ndef kd_register_samplers(register):\n    register('random-ids', RandomIds, Params)\n",
              "clash")
    tiny_spec["datasets"]["noise"]["sampler"] = {"name": "random-ids"}
    code, output = kd("validate", write_spec(tiny_spec))
    said = one_line(output)
    clash = "sampler 'random-ids' is registered twice: by kd_plugins and by clash (kd-pkg-clash 1.2)"
    assert code == 1 and f"{clash}: pip uninstall kd-pkg-clash, or set KD_DISABLE_PLUGINS=clash" in said
    tiny_spec["datasets"]["noise"]["sampler"] = {"name": "uniform"}
    code, output = kd("validate", write_spec(tiny_spec, "other.toml"))
    assert code == 0 and f"warning: {clash}; a spec cannot use either until one is gone" in one_line(output)
    code, output = kd("plugins", "--json")  # the command that shows the clash works through it
    listing = json.JSONDecoder().raw_decode(output)[0]  # the warning follows, on stderr
    row = next(c for c in listing if c["kind"] == "sampler" and c["name"] == "random-ids")
    assert code == 0 and row["unusable"].startswith(clash)


def test_kd_plugins_names_packages_choices_and_limits(installed):
    installed("kd_pkg_gauss", HEADER + textwrap.dedent('''
        from typing import Literal

        class P(Params):
            """Gaussian rows."""
            sigma: float = Field(1.0, gt=0, le=10, description="spread")
            dtype: Literal["float32", "bfloat16"] = "float32"

        @hookimpl
        def kd_register_samplers(register):
            register("gauss", "kd_pkg_gauss:P", P)
    '''), "gauss")
    code, output = kd("plugins", "--kind", "sampler", "--json")
    row = next(c for c in json.loads(output) if c["name"] == "gauss")
    assert code == 0 and row["from"] == "gauss" and row["package"] == {"name": "kd-pkg-gauss", "version": "1.2"}
    params = {p["name"]: p for p in row["parameters"]}
    assert params["sigma"]["limits"] == "> 0, <= 10" and params["dtype"]["type"] == "'float32' | 'bfloat16'"
    from rich.console import Console

    from kdcore.report.plugins_view import plugin_tables

    console = Console(width=400, record=True, file=io.StringIO())
    for table in plugin_tables([row]):
        console.print(table)
    assert "gauss (kd-pkg-gauss 1.2)" in console.export_text()


def test_names_in_kd_disable_plugins_are_checked_and_said_when_a_component_is_missing(installed, tiny_spec,
                                                                                       write_spec, monkeypatch):
    installed("kd_pkg_flat", student_source(), "flat")
    monkeypatch.setenv("KD_DISABLE_PLUGINS", "flat,flta")
    tiny_spec["student"] = {"name": "flat"}
    code, output = kd("validate", write_spec(tiny_spec))
    said = one_line(output)
    assert code == 1 and "KD_DISABLE_PLUGINS leaves out 'flat' (kd-pkg-flat 1.2)" in said
    assert "KD_DISABLE_PLUGINS names 'flta', which is no installed plugin or package — did you mean 'flat'?" in said


@pytest.mark.slow
def test_a_reverted_plugin_student_names_its_package_and_carries_the_tokenizer(installed, tiny_spec, write_spec, tmp_path):
    """Loading it where the package is missing says which package to install; its files have the
    usual permissions."""
    installed("kd_pkg_flat", student_source(), "flat")
    tiny_spec["student"] = {"name": "flat"}
    tiny_spec["datasets"]["noise"]["positions"] = "all"
    path = write_spec(tiny_spec)
    code, output = kd("run", path)
    assert code == 0, output
    folder = tmp_path / "runs" / "tiny" / "reverted"
    meta = json.loads((folder / "config.json").read_text())["llamakd_student"]
    assert meta["student"] == "flat" and meta["package"] == {"name": "kd-pkg-flat", "version": "1.2"}
    mask = os.umask(0)
    os.umask(mask)
    written = [f for root in (tmp_path / "runs", tmp_path / "store") for f in root.rglob("*") if f.is_file()]
    assert folder / "model.safetensors" in written and tmp_path / "runs/tiny/student/float_student.safetensors" in written
    for f in written:  # safetensors writes 0600: every file of the run is as readable as the umask allows
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    import subprocess

    env = {**os.environ, "KD_DISABLE_PLUGINS": "flat"}
    proc = subprocess.run([sys.executable, "-c", f"import kdcore; kdcore.load_student({str(folder)!r})"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "student 'flat' is not installed here; it comes from the package 'kd-pkg-flat' 1.2: pip install " \
           "'kd-pkg-flat==1.2'" in proc.stderr
