"""``python -m directory.cli``: the ``annuaire`` command."""

import sys

from directory.cli import main

sys.exit(main())
