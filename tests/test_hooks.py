"""Every hook in kdcore/hookspecs.py, exercised by an inline plugin (registered, then unregistered in
`finally`), plus the guards around plugin loading: documented hooks, duplicate names, misspelled
hooks, and discovery through the entry-point group `kd`."""

from __future__ import annotations

import inspect
import re
import sys

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from kdcore.plugin import hookspecs
from kdcore.stages.builder import Builder
from kdcore.api import Inputs, Params, Targets
from kdcore.problems import KDError
from kdcore.plugin.hookspecs import hookimpl
from kdcore.run.metrics_log import MetricsLog, read_metrics
from kdcore.plugin.registry import KINDS, kind_plural, load_registry
from kdcore.config.load import parse_spec

HOOKS = sorted(name for name, fn in vars(hookspecs).items() if hasattr(fn, f"{hookspecs.PROJECT}_spec"))


def with_plugin(plugin):
    """A registry with `plugin` added to the built-ins; the caller unregisters it in `finally`."""
    registry = load_registry(extra_plugins=[plugin])
    assert registry.pm.is_registered(plugin)
    return registry


def unregister(registry, plugin):
    registry.pm.unregister(plugin)
    assert not registry.pm.is_registered(plugin)


# --- one test per hook --------------------------------------------------------------------------------


class ConstIdsParams(Params):
    """Every position holds the same token id."""

    token: int = Field(3, ge=0)


class ConstIds:
    produces = "ids"
    deterministic = "pure"

    def __init__(self, params: ConstIdsParams, ctx):
        self.token, self.S = params.token, ctx.max_seq_len

    def sample(self, indices, seed):
        return Inputs(lengths=torch.full((len(indices),), self.S), ids=torch.full((len(indices), self.S), self.token))


def test_hook_kd_register_samplers(tiny_spec):
    class Plugin:
        @hookimpl
        def kd_register_samplers(self, register):
            register("const-ids", ConstIds, ConstIdsParams)

    plugin = Plugin()
    registry = with_plugin(plugin)
    try:
        assert "const-ids" in registry.names("sampler")
        assert registry.get("sampler", "const-ids").source == "Plugin"
        # the new sampler is usable inside a built-in one, with its own parameters validated
        tiny_spec["datasets"]["noise"]["sampler"]["sampler"] = {"name": "const-ids", "token": 5}
        spec = parse_spec(tiny_spec, registry=registry)
        batch = Builder(spec).sampler("noise").sample([0, 1, 2], seed=1)
        assert batch.ids.shape == (3, 6) and set(batch.ids[batch.mask()].tolist()) == {5}

        tiny_spec["datasets"]["noise"]["sampler"]["sampler"] = {"name": "const-ids", "token": -1}
        with pytest.raises(KDError, match=r"datasets\.noise\.sampler\.sampler\.token: Input should be greater"):
            parse_spec(tiny_spec, registry=registry)
    finally:
        unregister(registry, plugin)


def test_hook_kd_register_teachers(tiny_spec):
    from kd_plugins.teachers import TinyLlamaParams

    class Plugin:
        @hookimpl
        def kd_register_teachers(self, register):
            # a "module:Class" string: imported only when a spec selects this teacher
            register("my-tiny", "kd_plugins.teachers:tiny_llama", TinyLlamaParams)

    plugin = Plugin()
    registry = with_plugin(plugin)
    try:
        component = registry.get("teacher", "my-tiny")
        assert isinstance(component.target, str)
        tiny_spec["teacher"]["name"] = "my-tiny"
        teacher = Builder(parse_spec(tiny_spec, registry=registry)).teacher
        assert teacher.vocab_size == 64
        assert callable(component.target)  # resolved on first use
    finally:
        unregister(registry, plugin)


class BigramParams(Params):
    """Next-token logits from the last token alone: one Linear(vocab, vocab)."""


class Bigram(torch.nn.Module):
    positions = ("last", "all")

    def __init__(self, params: BigramParams, ctx):
        super().__init__()
        self.embed = torch.nn.Linear(ctx.vocab_size, ctx.vocab_size)
        self.vocab_size = ctx.vocab_size

    def forward(self, inputs: Inputs, positions: str = "last"):
        logits = self.embed(inputs.as_soft(self.vocab_size))
        return logits if positions == "all" else logits[torch.arange(inputs.batch_size), inputs.lengths - 1]

    def revert(self):
        raise NotImplementedError


def test_hook_kd_register_students(tiny_spec):
    class Plugin:
        @hookimpl
        def kd_register_students(self, register):
            register("bigram", Bigram, BigramParams)

    plugin = Plugin()
    registry = with_plugin(plugin)
    try:
        tiny_spec["student"] = {"name": "bigram"}
        student = Builder(parse_spec(tiny_spec, registry=registry)).student(6)
        assert sum(p.numel() for p in student.parameters()) == 64 * 64 + 64
        ids = torch.zeros(2, 6, dtype=torch.long)
        assert student(Inputs(lengths=torch.tensor([6, 3]), ids=ids)).shape == (2, 64)

        tiny_spec["student"] = {"name": "bigram", "hidden_size": 8}  # its model has no parameters at all
        with pytest.raises(KDError, match=r"student\.hidden_size: unknown key"):
            parse_spec(tiny_spec, registry=registry)
    finally:
        unregister(registry, plugin)


class L1Params(Params):
    """Mean absolute difference of logits."""


class L1:
    def __init__(self, params: L1Params, ctx=None):
        pass

    def __call__(self, student_logits, targets: Targets, mask=None):
        return (student_logits - targets.logits).abs().mean()


def test_hook_kd_register_losses(tiny_spec):
    class Plugin:
        @hookimpl
        def kd_register_losses(self, register):
            register("l1", L1, L1Params)

    plugin = Plugin()
    registry = with_plugin(plugin)
    try:
        tiny_spec["phases"][0]["losses"] = [{"name": "kl"}, {"name": "l1", "weight": 0.5}]
        losses = Builder(parse_spec(tiny_spec, registry=registry)).losses(0)
        assert [(name, weight) for name, weight, _ in losses] == [("kl", 1.0), ("l1", 0.5)]
        l1 = losses[1][2]
        assert l1(torch.zeros(2, 4), Targets(logits=torch.ones(2, 4))).item() == pytest.approx(1.0)
    finally:
        unregister(registry, plugin)


class LionParams(Params):
    """Sign-of-momentum updates (a third party's optimizer)."""

    beta: float = Field(0.9, ge=0, lt=1)


class Lion:
    def __init__(self, params: LionParams, ctx):
        self.beta = params.beta

    def __call__(self, parameters, lr):
        return torch.optim.SGD(parameters, lr=lr, momentum=self.beta)  # stands in for the real update rule


def test_hook_kd_register_optimizers(tiny_spec):
    class Plugin:
        @hookimpl
        def kd_register_optimizers(self, register):
            register("lion", Lion, LionParams)

    plugin = Plugin()
    registry = with_plugin(plugin)
    try:
        tiny_spec["phases"][0]["optimizer"] = {"name": "lion", "beta": 0.5}
        spec = parse_spec(tiny_spec, registry=registry)
        optimizer = Builder(spec).optimizer(0, [torch.nn.Parameter(torch.zeros(3))])
        assert isinstance(optimizer, torch.optim.SGD)
        assert optimizer.param_groups[0]["momentum"] == 0.5 and optimizer.param_groups[0]["lr"] == spec.phases[0].lr
        assert spec.resolved()["phases"][0]["optimizer"] == {"name": "lion", "beta": 0.5}
    finally:
        unregister(registry, plugin)


class WarmupParams(Params):
    """Linear warm-up over the first `steps` steps."""

    steps: int = Field(10, gt=0)


class Warmup:
    per_epoch = False

    def __init__(self, params: WarmupParams, ctx):
        self.steps = params.steps

    def __call__(self, optimizer, total_steps):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / self.steps))


def test_hook_kd_register_schedulers(tiny_spec):
    class Plugin:
        @hookimpl
        def kd_register_schedulers(self, register):
            register("warmup", Warmup, WarmupParams)

    plugin = Plugin()
    registry = with_plugin(plugin)
    try:
        tiny_spec["phases"][0]["scheduler"] = {"name": "warmup", "steps": 4}
        builder = Builder(parse_spec(tiny_spec, registry=registry))
        optimizer = builder.optimizer(0, [torch.nn.Parameter(torch.zeros(3))])
        scheduler, per_epoch = builder.scheduler(0, optimizer, 100)
        assert per_epoch is False
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 4)  # step 0 of the warm-up
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 2)
    finally:
        unregister(registry, plugin)


def test_hook_kd_on_metrics(tmp_path):
    seen = []

    class Plugin:
        @hookimpl
        def kd_on_metrics(self, stage, record):
            seen.append((stage, record))

    plugin = Plugin()
    registry = with_plugin(plugin)
    try:
        log = MetricsLog(tmp_path / "metrics.jsonl", registry)
        log.write("train", {"step": 1, "loss": 0.5})
        log.write("eval", {"perplexity": 12.0})
        assert [(stage, record.get("step"), record.get("perplexity")) for stage, record in seen] == [
            ("train", 1, None), ("eval", None, 12.0)]
        assert seen[0][1] == read_metrics(tmp_path / "metrics.jsonl", "train")[0]  # what the file holds
    finally:
        unregister(registry, plugin)
    MetricsLog(tmp_path / "metrics.jsonl", registry).write("train", {"step": 2})
    assert len(seen) == 2  # unregistered: no longer called


def test_every_hook_has_a_test():
    tests = {name for name in globals() if name.startswith("test_hook_")}
    assert HOOKS and {f"test_hook_{hook}" for hook in HOOKS} <= tests


# --- the table of contents itself -----------------------------------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert doc and len(doc.split()) >= 10, f"{hook} needs a docstring that states its contract"
    for param in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert param in doc or param == "register", f"{hook}: the docstring does not explain `{param}`"


def test_every_kind_has_a_registration_hook():
    assert {f"kd_register_{kind_plural(kind)}" for kind in KINDS} <= set(HOOKS)


def test_builtins_are_plugins_too():
    registry = load_registry()
    for kind in KINDS:
        assert registry.names(kind), kind
        assert {registry.get(kind, name).source for name in registry.names(kind)} == {"kd_plugins"}


# --- loading guards -------------------------------------------------------------------------------


def test_duplicate_component_name_fails_naming_both_sources():
    class Shadow:
        @hookimpl
        def kd_register_samplers(self, register):
            register("uniform", ConstIds, ConstIdsParams)

    with pytest.raises(KDError, match=r"sampler 'uniform' is registered twice: by kd_plugins and by Shadow"):
        load_registry(extra_plugins=[Shadow()])


def test_duplicate_within_one_plugin_fails():
    class Twice:
        @hookimpl
        def kd_register_losses(self, register):
            register("l1", L1, L1Params)
            register("l1", L1, L1Params)

    with pytest.raises(KDError, match=r"loss 'l1' is registered twice: by Twice and by Twice"):
        load_registry(extra_plugins=[Twice()])


def test_params_must_be_a_pydantic_model():
    class NoModel:
        @hookimpl
        def kd_register_losses(self, register):
            register("l1", L1, dict)

    with pytest.raises(KDError, match=r"NoModel: loss 'l1': params must be a pydantic model class"):
        load_registry(extra_plugins=[NoModel()])


def test_misspelled_hook_in_a_plugin_module_is_caught(tmp_path):
    (tmp_path / "typo_plugin.py").write_text(
        "from kdcore.plugin.hookspecs import hookimpl\n\n\n@hookimpl\ndef kd_register_sampler(register):\n    pass\n"
    )
    with pytest.raises(KDError) as info:
        load_registry(["typo_plugin.py"], tmp_path)
    assert str(info.value) == (
        "plugin 'typo_plugin.py': unknown hook 'kd_register_sampler' — did you mean 'kd_register_samplers'? "
        f"available: {', '.join(HOOKS)}"
    )


def test_misspelled_hook_in_an_inline_plugin_is_caught():
    class Typo:
        @hookimpl
        def kd_on_metric(self, stage, record):
            pass

    with pytest.raises(KDError, match=r"plugin 'Typo': unknown hook 'kd_on_metric' — did you mean 'kd_on_metrics'\?"):
        load_registry(extra_plugins=[Typo()])


def test_hookimpl_with_wrong_arguments_is_caught():
    class WrongArgs:
        @hookimpl
        def kd_register_samplers(self, reg):
            pass

    with pytest.raises(KDError, match=r"kd_register_samplers\(reg\).*\{'reg'\}"):
        load_registry(extra_plugins=[WrongArgs()])


@pytest.fixture
def installed_dist(tmp_path, monkeypatch):
    """install(module_name, source, entry_point_name): a distribution on sys.path with a `kd` entry point."""

    def install(module: str, source: str, entry_point: str) -> None:
        (tmp_path / f"{module}.py").write_text(source)
        info = tmp_path / "kd_demo_dist-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kd-demo-dist\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[kd]\n{entry_point} = {module}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, module, raising=False)

    yield install
    for module in [m for m in sys.modules if m.startswith("kd_demo_")]:
        del sys.modules[module]


def test_entry_point_group_kd_is_discovered(installed_dist, tiny_spec):
    installed_dist("kd_demo_samplers", (
        "from kdcore.api import Params\n"
        "from kdcore.plugin.hookspecs import hookimpl\n\n\n"
        "@hookimpl\n"
        "def kd_register_samplers(register):\n"
        "    register('demo-ids', 'kd_demo_samplers:Nothing', Params)\n"
    ), entry_point="demo")
    registry = load_registry()
    component = registry.get("sampler", "demo-ids")
    assert component.source == "demo"  # the entry point's name: what `kd plugins` shows as "from"
    assert registry.pm.get_plugin("demo") is sys.modules["kd_demo_samplers"]
    # an installed plugin's components need no `plugins = [...]` in the spec
    tiny_spec["datasets"]["noise"]["sampler"]["sampler"] = {"name": "demo-ids"}
    assert parse_spec(tiny_spec).datasets["noise"].sampler.params.sampler.name == "demo-ids"


def test_an_installed_plugin_with_a_misspelled_hook_is_skipped_with_a_warning(installed_dist):
    """One broken installed package must not break every command: it is left out, and said so once."""
    installed_dist("kd_demo_typo", (
        "from kdcore.api import hookimpl\n\n\n"
        "@hookimpl\ndef kd_register_studnets(register):\n    pass\n"
    ), entry_point="typo")
    registry = load_registry()
    assert not registry.pm.has_plugin("typo") and "uniform" in registry.names("sampler")
    assert registry.warnings == ["installed plugin 'typo' (kd-demo-dist 0.1) is skipped: plugin 'typo': unknown hook "
                                 "'kd_register_studnets' — did you mean 'kd_register_students'? available: "
                                 + ", ".join(sorted(HOOKS)) + " (fix or uninstall it, or set KD_DISABLE_PLUGINS=typo)"]


def test_spec_plugin_module_next_to_the_spec(tmp_path, tiny_spec, monkeypatch):
    """`plugins = ["name"]` imports a module from the spec's folder; a `.py` path works as well."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "kd_demo_local.py").write_text(
        "from kdcore.plugin.params import Params\n"
        "from kdcore.plugin.hookspecs import hookimpl\n\n\n"
        "@hookimpl\ndef kd_register_losses(register):\n    register('local-l1', 'kd_demo_local:L1', Params)\n"
    )
    try:
        for name in ("kd_demo_local", "kd_demo_local.py"):
            registry = load_registry([name], tmp_path)
            assert registry.get("loss", "local-l1").source == name
    finally:
        sys.modules.pop("kd_demo_local", None)
        sys.modules.pop("kd_user_plugin_kd_demo_local", None)


def test_hook_kd_on_trained(tiny_spec, tmp_path):
    """Called on every rank (here: one) with the trained float student and the run folder, after the
    student was saved there."""
    from kdcore.stages.generate import generate
    from kdcore.stages.train import Trainer, TrainStage, train

    seen = []

    class Plugin:
        @hookimpl
        def kd_on_trained(self, student, run_dir, rank):
            seen.append((type(student).__name__, run_dir, rank, (run_dir / "student" / "train.json").exists()))

    plugin = Plugin()
    registry = with_plugin(plugin)
    try:
        tiny_spec["phases"][0]["epochs"] = 1
        spec = parse_spec(tiny_spec, registry=registry)
        generate(spec, "noise")
        train(spec)
        assert seen == [("LlamaStudent", spec.run_path, 0, True)]
    finally:
        unregister(registry, plugin)


# --- the parameter contract and the typed callback ---------------------------------------------------


def _registering(target=ConstIds, params=ConstIdsParams, name="const-ids", **by_keyword):
    class Registers:
        @hookimpl
        def kd_register_samplers(self, register):
            if by_keyword:
                register(name=name, target=target, params=params)
            else:
                register(name, target, params)

    return Registers()


class LooseParams(BaseModel):
    token: int = 3


class InfParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = 1.0


class Inner(BaseModel):
    width: int = 1


class NestedParams(Params):
    inner: Inner = Inner()


class LaxParams(Params):
    """Strictness off on purpose: the contract is unknown keys and non-finite floats, not strict types."""

    model_config = ConfigDict(strict=False)
    token: int = 3


@pytest.mark.parametrize("params, problem", [
    (LooseParams, "LooseParams lets unknown keys through (extra='ignore')"),
    (InfParams, "InfParams accepts inf and nan as floats"),
    (NestedParams, "Inner lets unknown keys through"),
    (dict, "params must be a pydantic model class"),
])
def test_a_params_model_that_breaks_the_contract_is_refused(params, problem):
    with pytest.raises(KDError) as info:
        load_registry(extra_plugins=[_registering(params=params)])
    message = str(info.value)
    assert message.startswith("Registers: sampler 'const-ids': ") and problem in message, message
    assert "kdcore.api.Params" in message  # what to do about it


def test_a_params_model_that_keeps_the_contract_may_relax_the_rest(tiny_spec):
    registry = load_registry(extra_plugins=[_registering(params=LaxParams)])
    tiny_spec["datasets"]["noise"]["sampler"]["sampler"] = {"name": "const-ids", "token": "5"}
    assert parse_spec(tiny_spec, registry=registry).datasets["noise"].sampler.params.sampler.params.token == 5


@pytest.mark.parametrize("target, name, problem", [
    ("kd_plugins.samplers.Uniform", "x", "the target must be a class, a factory (params, ctx) -> component, or a 'module:attr'"),
    (42, "x", "the target must be"),
    (ConstIds, "", "needs a non-empty string name, got ''"),
    (ConstIds, 7, "needs a non-empty string name, got 7"),
])
def test_a_registration_that_cannot_be_built_is_refused(target, name, problem):
    with pytest.raises(KDError, match=re.escape(problem)):
        load_registry(extra_plugins=[_registering(target=target, name=name)])


def test_registration_hooks_hand_out_the_typed_callback():
    """Each registration hook is annotated with `Register`, and the callback plugins get takes its
    parameters by the names the Protocol gives them (a plugin may pass them by keyword)."""
    expected = list(inspect.signature(hookspecs.Register.__call__).parameters)[1:]
    assert expected == ["name", "target", "params"]
    for kind in KINDS:
        spec = getattr(hookspecs, f"kd_register_{kind_plural(kind)}")
        assert inspect.signature(spec).parameters["register"].annotation in ("Register", hookspecs.Register)
    registry = load_registry(extra_plugins=[_registering(by_keyword=True)])
    assert registry.get("sampler", "const-ids").target is ConstIds
    given = []

    class Spy:
        @hookimpl
        def kd_register_losses(self, register):
            given.append(register)

    load_registry(extra_plugins=[Spy()])
    assert list(inspect.signature(given[0]).parameters) == expected


def test_a_lazy_target_that_does_not_import_is_reported_at_its_key(tiny_spec):
    registry = load_registry(extra_plugins=[_registering(target="kd_no_such_module:Sampler")])
    tiny_spec["datasets"]["noise"]["sampler"]["sampler"] = {"name": "const-ids"}
    spec = parse_spec(tiny_spec, registry=registry)  # listing and validating never import it
    with pytest.raises(KDError) as info:
        Builder(spec).sampler("noise")
    assert [(p.key, p.message) for p in info.value.problems] == [("datasets.noise.sampler.sampler",
                                    "sampler 'const-ids' (from Registers): cannot import kd_no_such_module:Sampler: "
                                    "No module named 'kd_no_such_module'")]
