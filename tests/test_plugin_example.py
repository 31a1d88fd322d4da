"""The "Writing a plugin" example is real code: copied out of the docs next to its spec, it validates,
samples deterministically and generates a store."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from conftest import kd_in_process as kd
import torch

from kdcore.build import Builder
from kdcore.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
MODULE = "my_sampler"


def example_source() -> Path:
    """README.md once the example is pasted there, docs/plugin_example.md until then."""
    readme = REPO / "README.md"
    if readme.exists() and f"# {MODULE}.py" in readme.read_text():
        return readme
    return REPO / "docs" / "plugin_example.md"


def fenced(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", markdown, flags=re.S | re.M)




@pytest.fixture(params=[example_source()], ids=lambda p: str(p.relative_to(REPO)))
def example(request, tmp_path, monkeypatch):
    """The plugin and its spec written into an empty folder, which is also the working directory."""
    text = request.param.read_text()
    code = [block for block in fenced(text, "python") if block.startswith(f"# {MODULE}.py\n")]
    specs = [block for block in fenced(text, "toml") if f'plugins = ["{MODULE}"]' in block]
    assert len(code) == 1, f"{request.param}: one ```python block starting with '# {MODULE}.py'"
    assert len(specs) == 1, f"{request.param}: one ```toml block with plugins = [\"{MODULE}\"]"
    (tmp_path / f"{MODULE}.py").write_text(code[0])
    spec = tmp_path / "example.toml"
    spec.write_text(specs[0])
    monkeypatch.chdir(tmp_path)  # store/ and runs/ are relative to the working directory
    monkeypatch.setattr(sys, "path", list(sys.path))  # the spec's folder is put on sys.path
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    try:
        yield spec
    finally:
        sys.modules.pop(MODULE, None)


def plugin_dataset(spec) -> str:
    """The dataset whose sampler comes from the example plugin."""
    names = [name for name, ds in spec.datasets.items()
             if spec.registry.get("sampler", ds.sampler.name).source == MODULE]
    assert names, "the example spec does not use the example's sampler"
    return names[0]


def test_example_validates(example):
    code, output = kd("validate", example)
    assert code == 0, output
    assert f"{example}: valid" in " ".join(output.split())


def test_example_samples_deterministically(example):
    spec = load_spec(example)
    dataset = plugin_dataset(spec)
    builder = Builder(spec)
    sampler = builder.sampler(dataset)
    S, V, seed = spec.datasets[dataset].max_seq_len, builder.teacher.vocab_size, spec.datasets[dataset].seed

    batch = sampler.sample(list(range(8)), seed)
    rows = batch.ids if batch.ids is not None else batch.soft
    assert rows.shape[:2] == (8, S) and batch.lengths.tolist() == [S] * 8
    if batch.ids is not None:
        assert batch.ids.dtype == torch.long and 0 <= batch.ids.min() and batch.ids.max() < V
    # a pure function of (seed, index): the same rows whatever the batch they are asked in
    again = sampler.sample([5, 1], seed)
    assert torch.equal(batch.as_soft(V)[[5, 1]], again.as_soft(V))
    assert not torch.equal(batch.as_soft(V), sampler.sample(list(range(8)), seed + 1).as_soft(V))
    rebuilt = Builder(load_spec(example)).sampler(dataset)  # a new process would build the same sampler
    assert torch.equal(batch.as_soft(V), rebuilt.sample(list(range(8)), seed).as_soft(V))


def test_example_parameters_are_validated(example):
    text = example.read_text()
    assert "exponent = " in text
    example.write_text(re.sub(r"exponent = \S+", "exponent = 0", text))
    code, output = kd("validate", example)
    assert code == 1 and f"{example}: datasets." in output
    assert ".sampler.exponent: Input should be greater than 0" in output
    example.write_text(text.replace("exponent = ", "exponet = "))
    code, output = kd("validate", example)
    assert code == 1 and "sampler.exponet: unknown key — did you mean 'exponent'?" in output


def test_example_generates(example):
    from kdcore.store import Store

    code, output = kd("generate", example)
    assert code == 0, output
    spec = load_spec(example)
    dataset = plugin_dataset(spec)
    store = Store.open(spec.store_path(dataset))
    assert store.complete and store.layout.num_samples == spec.datasets[dataset].samples
    stored = torch.from_numpy(store.read_block(0, ["ids"])["ids"]).long()
    expected = Builder(spec).sampler(dataset).sample(list(range(len(stored))), spec.datasets[dataset].seed)
    assert torch.equal(stored, expected.ids)
    code, output = kd("generate", example)  # complete: nothing to redo
    assert code == 0 and "complete" in output
