"""torch.distributed in one place: the same code runs single-process or under torchrun."""

from __future__ import annotations

import os


def _dist():
    import torch.distributed as dist

    return dist


def init() -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _dist().is_initialized():
        import torch

        backend = "nccl" if torch.cuda.is_available() and os.environ.get("KD_BACKEND") != "gloo" else "gloo"
        _dist().init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def active() -> bool:
    return _dist().is_available() and _dist().is_initialized()


def rank() -> int:
    return _dist().get_rank() if active() else 0


def world() -> int:
    return _dist().get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        _dist().barrier()


def broadcast_object(obj):
    """rank 0's value on every rank (e.g. an error message, so all ranks stop together)."""
    if not active():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=0)
    return box[0]
