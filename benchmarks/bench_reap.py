"""fastreap's parent-side benchmarks (exit-to-notice, per-exit cost):
the same as ``fastreap bench --only reap``.

python benchmarks/bench_reap.py [--quick] [--json PATH]
"""

import sys

from fastreap._cli import main

main(["bench", "--only", "reap", *sys.argv[1:]])
