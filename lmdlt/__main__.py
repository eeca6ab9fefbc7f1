"""``python -m lmdlt``: the same as the ``lmdlt`` command."""
import sys

from .cli import main

sys.exit(main())
