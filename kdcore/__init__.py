"""LlamaKD: data-free knowledge distillation of language models.

Importing this package is cheap and changes nothing in the process: torch, transformers and zarr are
imported by the stages that use them, and process tuning (kdcore.system.tuning) is applied by the `kd`
command line, not on import. `load_student(path)` loads a distilled student (kdcore.run.artifact).
"""

__version__ = "0.2.0"


def load_student(path, device="cpu"):
    """The distilled student saved in `path` (runs/<experiment>/reverted): see kdcore.run.artifact."""
    from kdcore.run.artifact import load_student as load

    return load(path, device)
