"""Speed of rnnkit's recurrent layers against torch.nn: ``rnnkit bench`` as a script (see rnnkit/bench.py).

    python benchmarks/speed.py --repeat 5 --json runs/speed.json
"""

import sys

from rnnkit.bench import main

if __name__ == "__main__":
    sys.exit(main())
