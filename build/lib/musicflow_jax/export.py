"""`python -m musicflow_jax.export`: an entry point; the command line is musicflow_jax/cli/export.py."""

import sys

from musicflow_jax.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
