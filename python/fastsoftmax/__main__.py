"""``python -m fastsoftmax``: the same as the ``fastsoftmax`` command."""

import sys

from .cli import main

sys.exit(main())
