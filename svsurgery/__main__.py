"""``python -m svsurgery`` is the ``svsurgery`` command."""

import sys

from svsurgery.cli.main import main

sys.exit(main())
