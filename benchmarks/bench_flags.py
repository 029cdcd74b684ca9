"""Worker-side benchmarks (issue 2): flag-check cost and SIGTERM-to-thread delay.

    python benchmarks/bench_flags.py [--quick]

Runs fastreap._bench_flags (the same code `fastreap bench` runs) and prints
one line per case: median, p90, ratio to the baseline measured in this run.
"""

import sys

from fastreap import _bench_flags
from fastreap._benchutil import ratio


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    results = _bench_flags.run(quick, lambda msg: print(f"... {msg}", file=sys.stderr, flush=True))
    group = None
    for r in results:
        if r.group != group:
            group = r.group
            print(f"\n{group} ({r.unit})")
        x = ratio(results, r)
        rel = f"{x:.3g}x {r.baseline}" if x is not None else ""
        print(f"  {r.name:48} median {r.median:10.4g}  p90 {r.p90:10.4g}  n={len(r.samples):<3} {rel}")
        if r.goal or r.note:
            print(f"  {'':48} {('goal: ' + r.goal) if r.goal else ''}  {r.note}")


if __name__ == "__main__":
    main()
