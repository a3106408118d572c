"""`python -m musicflow_jax.assemble`: an entry point; the command line is musicflow_jax/cli/assemble.py."""

import sys

from musicflow_jax.cli.assemble import main

if __name__ == "__main__":
    sys.exit(main())
