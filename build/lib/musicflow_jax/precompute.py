"""`python -m musicflow_jax.precompute`: an entry point; the command line is musicflow_jax/cli/precompute.py."""

import sys

from musicflow_jax.cli.precompute import main

if __name__ == "__main__":
    sys.exit(main())
