"""The `kd` entry point keeps large freed blocks in glibc's heap (kdcore.system.tuning); importing kdcore changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource
import kdcore.system.tuning, torch
kdcore.system.tuning.tune_process()  # what `kd` does at its entry point
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a, b = torch.randn(50, 32000), torch.randn(50, 32000)  # a batch of vocab rows: 6.4 MB
for i in range(21):
    if i == 1:
        start = faults()
    c = a - b
    d = c.exp() * c  # the shape of a loss: a few vocab-sized temporaries, made and dropped
print(faults() - start)
"""


def faults_for(malloc: str) -> int:
    env = {**os.environ, "KD_MALLOC": malloc}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_without_page_faults():
    """20 rounds of vocab-sized temporaries: glibc's default maps fresh pages for each (hundreds of
    faults a round here); with kdcore's setting the rounds after the first reuse its memory."""
    kept, system = faults_for("keep"), faults_for("system")
    assert system > 20 * 100, system
    assert kept < system / 5, (kept, system)  # 2168 vs 32542 here


def test_importing_kdcore_changes_nothing_in_the_process():
    """A plugin author's notebook imports kdcore: no environment variable set, glibc untouched."""
    code = ("import os; before = dict(os.environ); import kdcore, kdcore.plugin.contracts, kdcore.config.spec; "
            "assert dict(os.environ) == before, set(os.environ) ^ set(before); "
            "import kdcore.system.tuning; assert not kdcore.system.tuning._done")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
