"""Plugin loading and the component registries.

`load_registry(extra_modules)` builds a pluggy PluginManager with the built-ins, the `kd` entry
points of installed packages and any module paths a spec lists, then asks every plugin to register
its components. Component classes may be given as "module:Class" strings and are imported only when
`Registry.resolve()` is called, so listing components stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pluggy
from pydantic import BaseModel

from kdcore import hookspecs
from kdcore.errors import KDError, did_you_mean
from kdcore.hookspecs import Register, Target
from kdcore.params import contract_problem

KINDS = ("teacher", "sampler", "student", "loss", "optimizer", "scheduler")
BUILTIN_MODULE = "kd_plugins"


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


class Registry:
    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.components: dict[str, dict[str, Component]] = {k: {} for k in KINDS}

    def _register_fn(self, kind: str, source: str) -> Register:
        def register(name: str, target: Target, params: type[BaseModel]) -> None:
            table = self.components[kind]
            if not isinstance(name, str) or not name:
                raise KDError(f"{source}: a {kind} needs a non-empty string name, got {name!r}")
            if name in table:
                raise KDError(
                    f"{kind} '{name}' is registered twice: by {table[name].source} and by {source}"
                )
            if not (callable(target) or isinstance(target, str) and ":" in target):
                raise KDError(f"{source}: {kind} '{name}': the target must be a class, a factory "
                              f"(params, ctx) -> component, or a 'module:attr' string, got {target!r}")
            problem = contract_problem(params)
            if problem:
                raise KDError(f"{source}: {kind} '{name}': {problem}")
            table[name] = Component(kind, name, target, params, source)

        return register

    def collect(self) -> None:
        for kind in KINDS:
            caller = getattr(self.pm.hook, f"kd_register_{kind_plural(kind)}")
            for impl in caller.get_hookimpls():  # registration order: a duplicate blames the newcomer
                impl.function(register=self._register_fn(kind, impl.plugin_name))

    def get(self, kind: str, name: str) -> Component:
        table = self.components[kind]
        if name not in table:
            raise KDError(f"unknown {kind} '{name}'{did_you_mean(name, list(table))}")
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])


def kind_plural(kind: str) -> str:
    return {"loss": "losses"}.get(kind, kind + "s")


def make_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


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
    if base_dir is not None and str(base_dir) not in sys.path:
        # a module dropped next to the spec is importable by its name
        sys.path.insert(0, str(base_dir))
    try:
        return importlib.import_module(path)
    except Exception as e:
        raise KDError(f"cannot import plugin module '{path}': {_import_problem(e)}") from None


def _import_problem(e: Exception) -> str:
    if isinstance(e, SyntaxError):
        return f"{e.msg} ({Path(e.filename or '?').name}, line {e.lineno})"
    if isinstance(e, ImportError):
        return str(e)
    frame = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {e} ({Path(frame.filename).name}, line {frame.lineno})"


def load_registry(
    extra_modules: Sequence[str] = (), base_dir: Path | None = None, extra_plugins: Sequence[object] = ()
) -> Registry:
    """Built-ins, then `kd` entry points, then the spec's plugin modules, then `extra_plugins`
    (objects with `@hookimpl` methods: inline plugins in tests, or an embedding application)."""
    pm = make_plugin_manager()
    pm.register(importlib.import_module(BUILTIN_MODULE), name=BUILTIN_MODULE)
    pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    try:
        for path in extra_modules:
            module = import_plugin_module(path, base_dir)
            if not pm.is_registered(module):
                pm.register(module, name=path)
        for plugin in extra_plugins:
            pm.register(plugin, name=getattr(plugin, "__name__", None) or type(plugin).__name__)
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise KDError(_hook_problem(pm, e)) from None
    registry = Registry(pm)
    registry.collect()
    return registry


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
