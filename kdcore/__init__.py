"""LlamaKD: data-free knowledge distillation of language models.

Importing this package is cheap: torch, transformers and zarr are imported by the stages that use them.
"""

__version__ = "0.1.0"
