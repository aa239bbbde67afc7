"""``python -m distill.export``: the command line of :mod:`distill.tools.export`.

Kept under the name the README gives the command; the tool itself lives with the others in
:mod:`distill.tools`.
"""

import sys

from distill.tools.export import main

if __name__ == "__main__":
    sys.exit(main())
