"""`python -m musicflow_jax.aot`: an entry point; the command line is musicflow_jax/cli/aot.py."""

import sys

from musicflow_jax.cli.aot import main

if __name__ == "__main__":
    sys.exit(main())
