"""The plugin author's guide (docs/plugins.md) is real code: each example plugin, copied out of the
docs next to its spec exactly as written, validates, runs end to end and is held to its contract
(`kd validate` tries it); its parameters are checked with the key that is wrong. The built-in
plugins use the same public API and nothing else of kdcore."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import torch

from conftest import kd_in_process as kd
from kdcore.config.load import load_spec
from kdcore.stages.builder import Builder
from kdcore.store.store import Store

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "plugins.md"
EXAMPLES = {"my_sampler": "noisy.toml", "my_loss": "topk.toml", "my_student": "gru.toml"}


def blocks(lang: str, first_line: str) -> list[str]:
    """The fenced `lang` blocks of the guide that start with `first_line`."""
    found = re.findall(rf"^```{lang}\n(.*?)^```", GUIDE.read_text(), flags=re.S | re.M)
    return [b for b in found if b.startswith(first_line)]


@pytest.fixture(params=list(EXAMPLES))
def example(request, tmp_path, monkeypatch):
    """An example plugin and its spec written into an empty folder, also the working directory."""
    module = request.param
    code, spec = blocks("python", f"# {module}.py\n"), blocks("toml", f"# {EXAMPLES[module]}")
    assert len(code) == 1 and len(spec) == 1, f"{GUIDE}: one block each of {module}.py and {EXAMPLES[module]}"
    assert "kdcore.api" in code[0] and not re.search(r"from kdcore\.(?!api)", code[0])  # the public API only
    (tmp_path / f"{module}.py").write_text(code[0])
    (tmp_path / EXAMPLES[module]).write_text(spec[0])
    monkeypatch.chdir(tmp_path)  # store/ and runs/ are relative to the working directory
    monkeypatch.setattr(sys, "path", list(sys.path))  # the spec's folder is put on sys.path
    monkeypatch.delitem(sys.modules, module, raising=False)
    try:
        yield tmp_path / EXAMPLES[module]
    finally:
        sys.modules.pop(module, None)


@pytest.mark.slow
def test_example_validates_and_runs(example):
    code, output = kd("validate", example)
    assert code == 0, output
    assert f"{example}: valid" in " ".join(output.split())
    code, output = kd("run", example)
    assert code == 0, output
    spec = load_spec(example)
    assert (spec.run_path / "eval" / "report.json").exists()
    assert (spec.run_path / "reverted" / "config.json").exists()


def test_the_sampler_example_is_pure_and_generates_what_it_samples(tmp_path, monkeypatch):
    (code,), (spec_text,) = blocks("python", "# my_sampler.py\n"), blocks("toml", "# noisy.toml")
    (tmp_path / "my_sampler.py").write_text(code)
    (tmp_path / "noisy.toml").write_text(spec_text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "my_sampler", raising=False)
    spec = load_spec("noisy.toml")
    builder = Builder(spec)
    sampler, seed = builder.sampler("noisy"), spec.datasets["noisy"].seed
    batch = sampler.sample(list(range(8)), seed)
    assert batch.soft.shape == (8, 8, 64) and (batch.soft.argmax(-1) >= 0).all()
    assert torch.equal(batch.soft[[5, 1]], sampler.sample([5, 1], seed).soft)  # a pure function of (seed, index)
    assert not torch.equal(batch.soft, sampler.sample(list(range(8)), seed + 1).soft)
    code, output = kd("generate", "noisy.toml")
    assert code == 0, output
    store = Store.open(spec.store_path("noisy"))
    assert store.complete and store.layout.regenerates_inputs  # float rows kept as seeds, checked when regenerated
    sys.modules.pop("my_sampler", None)


@pytest.mark.parametrize("module, edit, said", [
    ("my_sampler", ("std = 0.2", "std = -1"), "datasets.noisy.sampler.std: Input should be greater than or equal to 0"),
    ("my_sampler", ("std = 0.2", "sdt = 0.2"), "datasets.noisy.sampler.sdt: unknown key — did you mean 'std'?"),
    ("my_sampler", ("std = 0.2", "std = 50.0"), "datasets.noisy.sampler.std: 50.0 drowns the one-hot entry (1.0) in noise"),
    ("my_loss", ("k = 8", "k = 32"), "phases[0].losses[0].k: 32 is more than the 16 logits the dataset's store keeps"),
    ("my_student", ("width = 12", "width = 0"), "student.width: Input should be greater than 0"),
])
def test_example_parameters_are_refused_with_their_key(tmp_path, monkeypatch, module, edit, said):
    (code,), (spec_text,) = blocks("python", f"# {module}.py\n"), blocks("toml", f"# {EXAMPLES[module]}")
    assert edit[0] in spec_text
    (tmp_path / f"{module}.py").write_text(code)
    path = tmp_path / EXAMPLES[module]
    path.write_text(spec_text.replace(edit[0], edit[1]))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    try:
        code, output = kd("validate", path)
    finally:
        sys.modules.pop(module, None)
    assert code == 1 and "Traceback" not in output
    assert f"{path}: {said}" in " ".join(output.split())


def test_built_in_plugins_import_only_the_public_api():
    """`plugins/` (kd_plugins) are plugins like any other: from kdcore they import kdcore.api alone."""
    for path in sorted((REPO / "plugins").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                assert not name.startswith("kdcore") or name == "kdcore.api", f"{path.name} imports {name}"
