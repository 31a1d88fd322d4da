"""Components are checked against their contract (kdcore.plugin.contracts) when they are built and, for
samplers, on every batch they draw: a plugin that misses a piece is named, with what it misses."""

from __future__ import annotations

import pytest
import torch

from conftest import kd_in_process as kd
from kdcore.stages.builder import Builder
from kdcore.api import Inputs
from kdcore.problems import KDError
from kdcore.stages.generate import generate
from kdcore.plugin.hookspecs import hookimpl
from kdcore.plugin.params import Params
from kdcore.plugin.registry import load_registry
from kdcore.config.load import parse_spec


class NoParams(Params):
    """Nothing to set."""


class NoProduces:
    deterministic = "pure"

    def __init__(self, params, ctx):
        self.S = ctx.max_seq_len

    def sample(self, indices, seed):
        return Inputs(lengths=torch.full((len(indices),), self.S), ids=torch.zeros(len(indices), self.S, dtype=torch.long))


class PastVocab(NoProduces):
    produces = "ids"

    def sample(self, indices, seed):
        return Inputs(lengths=torch.full((len(indices),), self.S), ids=torch.full((len(indices), self.S), 1000))


class WrongShape(NoProduces):
    produces = "soft"

    def sample(self, indices, seed):
        return Inputs(lengths=torch.full((len(indices),), self.S), soft=torch.zeros(len(indices), self.S, 7))


class WrongLogits(NoProduces):  # brings the teacher's logits, but only at the last position
    produces = "ids"

    def sample(self, indices, seed):
        B = len(indices)
        return Inputs(lengths=torch.full((B,), self.S), ids=torch.zeros(B, self.S, dtype=torch.long),
                      logits=torch.zeros(B, 64))


class Impure(NoProduces):
    produces = "ids"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.calls = 0

    def sample(self, indices, seed):
        self.calls += 1  # a sample that depends on how many batches came before
        return Inputs(lengths=torch.full((len(indices),), self.S),
                      ids=torch.full((len(indices), self.S), self.calls % 64))


def half_a_teacher(params, ctx):
    from kd_plugins.teachers import TinyLlamaParams, tiny_llama

    teacher = tiny_llama(TinyLlamaParams(vocab_size=64, hidden_size=32, intermediate_size=64))

    class Partial:  # everything but `fingerprint` and `identity`
        name, vocab_size, max_positions = "partial", teacher.vocab_size, teacher.max_positions
        device, dtype = teacher.device, teacher.dtype
        embedding_weight, logits, tokenizer = teacher.embedding_weight, teacher.logits, teacher.tokenizer

    return Partial()


class ContractPlugin:
    @hookimpl
    def kd_register_samplers(self, register):
        for name, cls in (("no-produces", NoProduces), ("past-vocab", PastVocab), ("wrong-shape", WrongShape),
                          ("wrong-logits", WrongLogits), ("impure", Impure)):
            register(name, cls, NoParams)

    @hookimpl
    def kd_register_teachers(self, register):
        register("partial", half_a_teacher, NoParams)


@pytest.fixture
def registry():
    plugin = ContractPlugin()
    registry = load_registry(extra_plugins=[plugin])
    yield registry
    registry.pm.unregister(plugin)


def with_sampler(tiny_spec, name):
    tiny_spec["datasets"]["noise"]["sampler"] = {"name": name}
    return tiny_spec


def test_a_sampler_without_produces_is_named_when_built(tiny_spec, registry):
    spec = parse_spec(with_sampler(tiny_spec, "no-produces"), registry=registry)
    with pytest.raises(KDError) as e:
        Builder(spec).sampler("noise")
    message = str(e.value)
    assert "datasets.noise.sampler: sampler 'no-produces' (from ContractPlugin)" in message
    assert "lacks produces ('ids' or 'soft')" in message


def test_a_teacher_without_required_attributes_is_named_when_built(tiny_spec, registry):
    tiny_spec["teacher"] = {"name": "partial"}
    with pytest.raises(KDError) as e:
        Builder(parse_spec(tiny_spec, registry=registry)).teacher  # noqa: B018
    message = str(e.value)
    assert "teacher: teacher 'partial' (from ContractPlugin)" in message
    assert "identity (a dict)" in message and "fingerprint (a method)" in message


@pytest.mark.parametrize("name, fragment", [
    ("past-vocab", "ids must be in [0, 64) (the teacher's vocabulary), got 1000 .. 1000"),
    ("wrong-shape", "float rows must be (8, 6, 64) float, got (8, 6, 7) float32"),
    ("wrong-logits", "logits must be (8, 6, 64) float32, got (8, 64) float32"),
])
def test_a_sampler_breaking_its_contract_is_named_at_generation(tiny_spec, registry, name, fragment):
    spec = parse_spec(with_sampler(tiny_spec, name), registry=registry)
    with pytest.raises(KDError) as e:
        generate(spec, "noise")
    assert f"datasets.noise.sampler: sampler '{name}' (from ContractPlugin) broke its contract: {fragment}" in str(e.value)
    assert not isinstance(e.value, IndexError)


def test_validate_reports_an_impure_plugin_sampler(tiny_spec, write_spec, tmp_path):
    """A sampler that is not built in is drawn twice by every `kd validate`; `--check` draws the
    built-in ones too."""
    plugin = tmp_path / "impure_plugin.py"
    plugin.write_text(
        "import torch\nfrom kdcore.api import Inputs\nfrom kdcore.plugin.hookspecs import hookimpl\n"
        "from kdcore.plugin.params import Params\n\n\nclass P(Params):\n    '''none'''\n\n\n"
        "class Impure:\n    produces, deterministic = 'ids', 'pure'\n\n"
        "    def __init__(self, params, ctx):\n        self.S, self.calls = ctx.max_seq_len, 0\n\n"
        "    def sample(self, indices, seed):\n        self.calls += 1\n"
        "        return Inputs(lengths=torch.full((len(indices),), self.S), ids=torch.full((len(indices), self.S), self.calls))\n\n\n"
        "@hookimpl\ndef kd_register_samplers(register):\n    register('impure', Impure, P)\n")
    tiny_spec["plugins"] = ["impure_plugin.py"]
    path = write_spec(with_sampler(tiny_spec, "impure"))
    for command in (("validate", path), ("validate", "--check", path)):
        code, out = kd(*command)
        message = " ".join(out.split())
        assert code == 1 and "Traceback" not in out
        assert "datasets.noise.sampler: sampler 'impure' (from impure_plugin.py) is not a pure function of (seed, index): sample 0 differs when drawn again" in message
    tiny_spec["datasets"]["noise"]["sampler"] = {"name": "random-ids"}
    code, out = kd("validate", "--check", write_spec(tiny_spec))
    assert code == 0 and "samplers pure" in " ".join(out.split())
