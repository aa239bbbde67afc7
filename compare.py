"""Compare distillation methods over seeds: ``python compare.py --config NAME [key=value ...]``.

See :mod:`distill.tools.compare` for what is trained and measured.
"""

import sys

from distill.tools.compare import main

if __name__ == "__main__":
    sys.exit(main())
