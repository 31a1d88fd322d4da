"""LlamaKD's built-in components, registered through the same hooks a third-party plugin uses.

Imported as `kd_plugins` (the folder is `plugins/`; the package name avoids clashing with other
top-level `plugins` packages). Each module has a `register_all(register)`; heavy imports
(transformers) happen inside the components, only when a spec selects one.
"""

from kdcore.api import hookimpl


@hookimpl
def kd_register_teachers(register):
    from kd_plugins import teachers

    teachers.register_all(register)


@hookimpl
def kd_register_samplers(register):
    from kd_plugins import samplers

    samplers.register_all(register)


@hookimpl
def kd_register_students(register):
    from kd_plugins import students

    students.register_all(register)


@hookimpl
def kd_register_losses(register):
    from kd_plugins import losses

    losses.register_all(register)


@hookimpl
def kd_register_optimizers(register):
    from kd_plugins import optim

    optim.register_optimizers(register)


@hookimpl
def kd_register_schedulers(register):
    from kd_plugins import optim

    optim.register_schedulers(register)
