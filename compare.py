"""Compare distillation methods over seeds: ``python compare.py --config NAME [key=value ...]``.

See :mod:`distill.compare` for what is trained and measured.
"""

import sys

from distill.compare import main

if __name__ == "__main__":
    sys.exit(main())
