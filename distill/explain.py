"""``python -m distill.explain``: the command line of :mod:`distill.tools.explain`.

Kept under the name the README gives the command; the tool itself lives with the others in
:mod:`distill.tools`.
"""

import sys

from distill.tools.explain import main

if __name__ == "__main__":
    sys.exit(main())
