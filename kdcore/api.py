"""The public API for plugin authors: everything a teacher, sampler, student, loss, optimizer or
schedule plugin needs, and nothing else of kdcore's. Built-in plugins import only from here.

    from kdcore.api import BuildContext, Inputs, ParamError, Params, hookimpl

    class ZipfIdsParams(Params):
        exponent: float = Field(1.1, gt=0)

    @hookimpl
    def kd_register_samplers(register):
        register("zipf", ZipfIds, ZipfIdsParams)

What each kind of component must have is its Protocol below (checked when the component is built);
the extension points are the hooks in `kdcore.plugin.hookspecs` (`hookimpl` marks them).
"""

from kdcore.plugin.contracts import (BuildContext, Loss, Optimizer, Positions, RevertedStudent, Sampler, Scheduler,
                                     Student, Teacher, TextTokenizer, runs_teacher)
from kdcore.plugin.data import Inputs, Targets, generator, last_positions, sample_seed
from kdcore.plugin.helpers import TAIL_FLOOR, SoftSampler, bucket_log_probs, valid_rows
from kdcore.plugin.hookspecs import Register, hookimpl
from kdcore.plugin.params import (ComponentRef, ContentInput, LossRef, OptimizerRef, Params, SamplerRef, SchedulerRef,
                                  Seed, StudentRef, TeacherRef, TextFile, added_field)
from kdcore.problems import KDError, ParamError, requires
from kdcore.report.console import reporter
from kdcore.run.artifact import CausalLMStudent
from kdcore.system.cache import cache_dir
from kdcore.system.machine import gib, memory_bytes
from kdcore.system.threads import spread
from kdcore.texts import read_text, resolve_text

__all__ = [
    # registering: the hook marker and the callback's type
    "hookimpl", "Register",
    # parameters: the base model, the one error, seeds, files read by content, nested components
    "Params", "ParamError", "KDError", "Seed", "TextFile", "ContentInput", "added_field",
    "ComponentRef", "TeacherRef", "SamplerRef", "StudentRef", "LossRef", "OptimizerRef", "SchedulerRef",
    # the data between components, and what a component is built with
    "Inputs", "Targets", "BuildContext", "Positions", "last_positions", "sample_seed", "generator",
    # what each kind of component must have
    "Teacher", "TextTokenizer", "Sampler", "Student", "RevertedStudent", "Loss", "Optimizer", "Scheduler",
    # helpers
    "SoftSampler", "spread", "valid_rows", "bucket_log_probs", "TAIL_FLOOR", "runs_teacher", "CausalLMStudent",
    "requires", "cache_dir", "read_text", "resolve_text", "note", "memory_bytes", "gib",
]


def note(message: str) -> None:
    """Tell the person running LlamaKD what is happening ("converting ... (once)"); plugins never print."""
    reporter.note(message)
