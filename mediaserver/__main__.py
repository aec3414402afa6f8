"""Run the `mediaserver` command line with `python -m mediaserver`."""

import sys

from mediaserver.cli import main

sys.exit(main())
