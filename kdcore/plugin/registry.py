"""Plugin loading and the component registries.

`load_registry(extra_modules)` builds a pluggy PluginManager with the built-ins, the `kd` entry
points of installed packages and any module paths a spec lists, then asks every plugin to register
its components. Component classes may be given as "module:Class" strings and are imported only when
`Component.resolve()` is called, so listing components stays cheap.

An installed package's plugin that fails to import, or registers a name another plugin has, is
skipped with a warning (`Registry.warnings`) rather than breaking every command: only a spec that
uses one of its names is refused, and the problem names the package. `KD_DISABLE_PLUGINS=a,b`
leaves out installed plugins by entry-point or package name. A spec's own plugin modules are not
skipped: their mistakes are the spec's problems.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pluggy
from pydantic import BaseModel

from kdcore.plugin import hookspecs
from kdcore.plugin.calls import shown_path
from kdcore.plugin.hookspecs import Register, Target
from kdcore.plugin.params import contract_problem
from kdcore.problems import KDError, did_you_mean

KINDS = ("teacher", "sampler", "student", "loss", "optimizer", "scheduler")
BUILTIN_MODULE = "kd_plugins"
DISABLE = "KD_DISABLE_PLUGINS"


@dataclass
class Component:
    kind: str
    name: str
    target: Target  # the class or factory, or "module:attr" imported lazily
    params: type[BaseModel]
    source: str  # the plugin that registered it

    def resolve(self):
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            try:
                self.target = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise KDError(f"{self.kind} '{self.name}' (from {self.source}): cannot import {self.target}: {e}") from None
        return self.target


@dataclass
class Registry:
    pm: pluggy.PluginManager
    installed: set[str] = field(default_factory=set)  # plugins from installed packages (entry points)
    warnings: list[str] = field(default_factory=list)
    unusable: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> why a spec cannot use it
    skipped: list[str] = field(default_factory=list)  # installed plugins that failed to load: why
    hints: list[str] = field(default_factory=list)  # what may keep a component out: hooks never called...
    disabled: list[str] = field(default_factory=list)  # installed plugins KD_DISABLE_PLUGINS left out
    packages: dict[str, dict] = field(default_factory=dict)  # installed plugin -> its package {name, version}
    components: dict[str, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def _register_fn(self, kind: str, source: str) -> Register:
        def register(name: str, target: Target, params: type[BaseModel]) -> None:
            table = self.components[kind]
            if not isinstance(name, str) or not name:
                raise KDError(f"{source}: a {kind} needs a non-empty string name, got {name!r}")
            if name in table:
                self._clash(kind, name, table[name].source, source)
                return
            if not (callable(target) or isinstance(target, str) and ":" in target):
                raise KDError(f"{source}: {kind} '{name}': the target must be a class, a factory "
                              f"(params, ctx) -> component, or a 'module:attr' string, got {target!r}")
            problem = contract_problem(params)
            if problem:
                raise KDError(f"{source}: {kind} '{name}': {problem}")
            table[name] = Component(kind, name, target, params, source)

        return register

    def _clash(self, kind: str, name: str, first: str, second: str) -> None:
        """Two plugins register one name: neither is used, since which one a spec meant is unknown.
        A spec's own module clashing with an installed plugin is the spec's problem."""
        clash = f"{kind} '{name}' is registered twice: by {self.label(first)} and by {self.label(second)}"
        installed = [s for s in (second, first) if s in self.installed]
        if second not in self.installed:  # the spec's module, or a plugin passed in: the last to register
            other = f", or leave the installed one out with {DISABLE}={first}" if first in self.installed else ""
            raise KDError(f"{clash}: rename yours{other}")
        fixes = " or ".join(f"pip uninstall {self.packages[s]['name']}" for s in installed if s in self.packages)
        how = f"{fixes}, or set " if fixes else "set "
        how += " or ".join(f"{DISABLE}={s}" for s in installed)
        self.warnings.append(f"{clash}; a spec cannot use either until one is gone ({how})")
        self.unusable[(kind, name)] = f"{clash}: {how}"

    def collect(self) -> None:
        for kind in KINDS:
            caller = getattr(self.pm.hook, f"kd_register_{kind_plural(kind)}")
            for impl in caller.get_hookimpls():  # registration order: a duplicate blames the newcomer
                impl.function(register=self._register_fn(kind, impl.plugin_name))

    def get(self, kind: str, name: str) -> Component:
        if (kind, name) in self.unusable:
            raise KDError(self.unusable[(kind, name)])
        table = self.components[kind]
        if name not in table:
            raise KDError(f"unknown {kind} '{name}'{did_you_mean(name, list(table))}{self._why_missing()}")
        return table[name]

    def _why_missing(self) -> str:
        """What may have kept an unknown component out: plugins skipped, hooks never called, plugins
        left out on purpose."""
        why = []
        if self.skipped:
            why.append(f"installed plugins that failed to load, which may provide it: {'; '.join(self.skipped)}")
        why += self.hints
        if self.disabled:
            why.append(f"{DISABLE} leaves out {', '.join(self.disabled)}")
        return f" ({'; '.join(why)})" if why else ""

    def label(self, source: str) -> str:
        """A plugin's name with the package that installed it: what `pip uninstall` needs."""
        package = self.packages.get(source)
        return f"{source} ({package['name']} {package['version']})" if package else source

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def package(self, component: Component) -> dict | None:
        """The installed distribution {name, version} that provides `component`, or None (a module or
        file a spec names)."""
        if component.source in self.packages:
            return self.packages[component.source]
        target = component.resolve()
        top = getattr(target, "__module__", "").split(".")[0]
        names = importlib.metadata.packages_distributions().get(top, [])
        return {"name": names[0], "version": importlib.metadata.version(names[0])} if names else None


def kind_plural(kind: str) -> str:
    return {"loss": "losses"}.get(kind, kind + "s")


def make_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_registry(extra_modules: Sequence[str] = (), base_dir: Path | None = None,
                  extra_plugins: Sequence[object] = ()) -> Registry:
    """Built-ins, then `kd` entry points, then the spec's plugin modules, then `extra_plugins`
    (objects with `@hookimpl` methods: inline plugins in tests, or an embedding application)."""
    registry = Registry(make_plugin_manager())
    pm = registry.pm
    pm.register(importlib.import_module(BUILTIN_MODULE), name=BUILTIN_MODULE)
    _load_installed(registry)
    try:
        for path in extra_modules:
            module = import_plugin_module(path, base_dir)
            if not pm.is_registered(module):
                pm.register(module, name=path)
                _unmarked_hooks(registry, module, path)
        for plugin in extra_plugins:
            pm.register(plugin, name=getattr(plugin, "__name__", None) or type(plugin).__name__)
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise KDError(_hook_problem(pm, e)) from None
    registry.collect()
    return registry


def _load_installed(registry: Registry) -> None:
    """The `kd` entry points of installed packages, each on its own: one that fails is skipped."""
    disabled = {n.strip() for n in os.environ.get(DISABLE, "").split(",") if n.strip()}
    points = list(importlib.metadata.entry_points(group=hookspecs.PROJECT))
    known = {ep.name for ep in points} | {ep.dist.name for ep in points if getattr(ep, "dist", None) is not None}
    for name in sorted(disabled - known):
        note = f"{DISABLE} names '{name}', which is no installed plugin or package{did_you_mean(name, sorted(known))}"
        registry.warnings.append(note)
        registry.hints.append(note)
    for ep in points:
        dist = getattr(ep, "dist", None)
        package = f"{dist.name} {dist.version}" if dist is not None else "an installed package"
        if ep.name in disabled or (dist is not None and dist.name in disabled):
            registry.disabled.append(f"'{ep.name}' ({package})")
            continue
        if registry.pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
            registry.pm.register(plugin, name=ep.name)
            registry.pm.check_pending()
        except Exception as e:
            why = _hook_problem(registry.pm, e) if isinstance(e, pluggy.PluginValidationError) else _import_problem(e)
            if registry.pm.has_plugin(ep.name):
                registry.pm.unregister(name=ep.name)
            registry.skipped.append(f"'{ep.name}' from {package}: {why}")
            registry.warnings.append(f"installed plugin '{ep.name}' ({package}) is skipped: {why} "
                                     f"(fix or uninstall it, or set {DISABLE}={ep.name})")
            continue
        registry.installed.add(ep.name)
        if dist is not None:
            registry.packages[ep.name] = {"name": dist.name, "version": dist.version}
        _unmarked_hooks(registry, plugin, ep.name)


def _unmarked_hooks(registry: Registry, plugin, name: str) -> None:
    """A kd_* function without @hookimpl is never called, and what it registers is missing: say so
    (a warning, and in the problem of a spec that names a missing component)."""
    if not inspect.ismodule(plugin):
        return
    marker = f"{hookspecs.PROJECT}_impl"  # the attribute pluggy's HookimplMarker sets
    bare = [n for n, f in vars(plugin).items() if n.startswith("kd_") and inspect.isfunction(f)
            and f.__module__ == plugin.__name__ and not hasattr(f, marker)]
    if bare:
        note = f"plugin '{name}' defines {', '.join(bare)} without @hookimpl (kdcore.api.hookimpl): never called"
        registry.warnings.append(note)
        registry.hints.append(note)


def import_plugin_module(path: str, base_dir: Path | None = None):
    """Import a plugin given as a dotted module name or a .py file path (relative to base_dir)."""
    if path.endswith(".py"):
        file = Path(path)
        if not file.is_absolute() and base_dir is not None:
            file = base_dir / file
        if not file.exists():
            raise KDError(f"plugin file not found: {file}")
        name = f"kd_user_plugin_{file.stem}"
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the plugin's own code failed: say where, keep no half-loaded module
            del sys.modules[name]
            raise KDError(f"cannot import plugin file {file}: {_import_problem(e)}") from None
        return module
    folder = str(Path(base_dir).resolve()) if base_dir is not None else None
    if folder is not None and folder not in sys.path:
        # a module dropped next to the spec is importable by its name
        sys.path.insert(0, folder)
    importlib.invalidate_caches()  # a module written since the last import (a test, a notebook) is found
    try:
        return importlib.import_module(path)
    except Exception as e:
        raise KDError(f"cannot import plugin module '{path}': {_import_problem(e)}") from None


def _import_problem(e: Exception) -> str:
    """What failed in a plugin's import, at the line of the plugin's own code (not importlib's)."""
    if isinstance(e, SyntaxError):
        return f"{e.msg} ({shown_path(e.filename or '?')}:{e.lineno})"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename
              and not f.filename.startswith("<") and Path(f.filename).resolve() != Path(__file__).resolve()]
    where = f" ({shown_path(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    if isinstance(e, ImportError):
        return f"{e}{_api_hint(e)}{where}"
    return f"{type(e).__name__}: {e}{where}"


def _api_hint(e: ImportError) -> str:
    """A name misspelled in `from kdcore.api import ...`: the closest that exists."""
    name = getattr(e, "name_from", None) or (str(e).split("'")[1] if str(e).startswith("cannot import name '") else "")
    if not name or not (e.name or "").startswith("kdcore"):
        return ""
    try:
        module = importlib.import_module(e.name)
    except ImportError:
        return ""
    return did_you_mean(name, [n for n in dir(module) if not n.startswith("_")])


def _hook_problem(pm: pluggy.PluginManager, e: pluggy.PluginValidationError) -> str:
    """pluggy's message, with the plugin's name and, for a misspelled hook, the closest real one."""
    hooks = [h for h in vars(hookspecs) if h.startswith("kd_")]
    unknown = [
        h for h, caller in vars(pm.hook).items()
        if isinstance(caller, pluggy.HookCaller) and not caller.has_spec()
        and any(i.plugin is e.plugin and not i.optionalhook for i in caller.get_hookimpls())
    ]
    if unknown:
        name = pm.get_name(e.plugin)
        return f"plugin '{name}': unknown hook '{unknown[0]}'{did_you_mean(unknown[0], hooks)}"
    return str(e).replace("\n", "; ")  # a hookimpl whose arguments do not match its hookspec


def describe(registry: Registry, kind: str | None = None) -> list[dict]:
    """Every component (of `kind`): its kind, name, plugin, description and parameters, each with its
    type, default and description (`kd plugins`, `--json`)."""
    out = []
    for k in KINDS:
        for name in registry.names(k) if kind in (None, k) else []:
            comp = registry.components[k][name]  # listed even when a clash makes it unusable: that is shown
            params = [{"name": f, "type": _type_name(info.annotation), "required": info.is_required(),
                       "default": None if info.is_required() else _jsonable(info.get_default(call_default_factory=True)),
                       "limits": _limits(info.metadata), "description": info.description or ""}
                      for f, info in comp.params.model_fields.items()]
            out.append({"kind": k, "name": name, "from": comp.source, "package": registry.packages.get(comp.source),
                        "unusable": registry.unusable.get((k, name)),
                        "description": first_paragraph(comp.params.__doc__), "parameters": params})
    return out


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line: a component's description (its first line alone
    may stop mid-sentence)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(v) for v in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _limits(metadata: list) -> str:
    """A field's bounds as pydantic declares them (Field(gt=0, le=1)): '> 0, <= 1'."""
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=", "max_length": "length <="}
    return ", ".join(f"{sign} {getattr(m, attr)}" for m in metadata for attr, sign in signs.items()
                     if getattr(m, attr, None) is not None)


def _jsonable(value):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None), dict)) else repr(value)
