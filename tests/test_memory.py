"""The `kd` entry point keeps large freed blocks in glibc's heap (kdcore.system.tuning); importing kdcore changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes
import kdcore.system.tuning
kdcore.system.tuning.tune_process()  # what `kd` does at its entry point

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = MallInfo2, ctypes.c_void_p
before = libc.mallinfo2().hblkhd
block = libc.malloc(6_400_000)  # a batch of vocab rows (50 x 32000 float32)
print(libc.mallinfo2().hblkhd - before)  # bytes glibc gave it as its own mapping
"""


def mapped_for(malloc: str) -> int:
    env = {**os.environ, "KD_MALLOC": malloc}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_vocab_sized_blocks_come_from_the_heap_not_their_own_mapping():
    """glibc maps a 6.4 MB block on its own (and unmaps it when freed, so the next one page-faults
    afresh); with kdcore's setting it comes from the heap and is reused. What it saves is measured by
    `python bench/allocator.py`."""
    assert mapped_for("system") >= 6_400_000
    assert mapped_for("keep") == 0


def test_importing_kdcore_changes_nothing_in_the_process():
    """A plugin author's notebook imports kdcore: no environment variable set, glibc untouched."""
    code = ("import os; before = dict(os.environ); import kdcore, kdcore.plugin.contracts, kdcore.config.spec; "
            "assert dict(os.environ) == before, set(os.environ) ^ set(before); "
            "import kdcore.system.tuning; assert not kdcore.system.tuning._done")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
