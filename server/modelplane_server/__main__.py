"""`python -m modelplane_server`: the same as the `modelplane-server` command."""

import sys

from modelplane_server.cli import main

sys.exit(main())
