"""fastreap's graceful_stop benchmarks: the same as ``fastreap bench --only stop``.

python benchmarks/bench_stop.py [--quick] [--json PATH]
"""

import sys

from fastreap._cli import main

main(["bench", "--only", "stop", *sys.argv[1:]])
