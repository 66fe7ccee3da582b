"""``python -m toolkit.cli``, as in 0.1 (``python -m toolkit`` is the same)."""

import sys

from toolkit.cli import main

sys.exit(main())
