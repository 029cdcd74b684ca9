"""Run fastreap's reaping benchmarks and print medians and ratios.

python benchmarks/bench_reap.py [--quick]
"""

import sys

from fastreap._bench_reap import run
from fastreap._benchutil import ratio

quick = "--quick" in sys.argv
results = run(quick, lambda msg: print(f"... {msg}", file=sys.stderr, flush=True))
group = None
for r in results:
    if r.group != group:
        group = r.group
        print(f"\n{group}")
    q = ratio(results, r)
    rs = f"{q:6.2f}x" if q is not None else "   base"
    print(f"  {r.name:38s} median {r.median:9.1f} {r.unit}  p90 {r.p90:9.1f}  {rs}  {r.goal} {r.note}")
