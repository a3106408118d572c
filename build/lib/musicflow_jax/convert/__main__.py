"""`python -m musicflow_jax.convert KIND SRC DST`: the command line is musicflow_jax/cli/convert.py."""

import sys

from musicflow_jax.cli.convert import main

sys.exit(main())
