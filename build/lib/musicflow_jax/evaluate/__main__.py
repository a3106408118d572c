"""`python -m musicflow_jax.evaluate ...`: the command line is musicflow_jax/cli/evaluate.py."""

import sys

from musicflow_jax.cli.evaluate import main

sys.exit(main())
