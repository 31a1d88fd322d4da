"""What kdcore's allocator setting (kdcore/system/tuning.py) saves: page faults over 20 rounds of
vocab-sized temporaries (the shape of a loss on a batch of 50 x 32000 rows), with glibc's default
(`KD_MALLOC=system`) and with the setting, each in a fresh process, side by side.

    python bench/allocator.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

PROBE = """
import resource
import kdcore.system.tuning, torch
kdcore.system.tuning.tune_process()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a, b = torch.randn(50, 32000), torch.randn(50, 32000)
for i in range(21):
    if i == 1:
        start = faults()
    c = a - b
    d = c.exp() * c
print(faults() - start)
"""


def faults(malloc: str) -> int:
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                       env={**os.environ, "KD_MALLOC": malloc})
    return int(r.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    system = [faults("system") for _ in range(args.runs)]
    kept = [faults("keep") for _ in range(args.runs)]
    s, k = statistics.median(system), statistics.median(kept)
    print(f"page faults, 20 rounds (median of {args.runs} processes): glibc default {s:.0f}, kdcore's setting {k:.0f}: "
          f"{s / max(k, 1):.1f}x fewer")


if __name__ == "__main__":
    main()
