"""fastreap's worker-side (stop flag) benchmarks: the same as ``fastreap bench --only flags``.

python benchmarks/bench_flags.py [--quick] [--json PATH]
"""

import sys

from fastreap._cli import main

main(["bench", "--only", "flags", *sys.argv[1:]])
