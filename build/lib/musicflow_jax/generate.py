"""`python -m musicflow_jax.generate`: an entry point; the command line is musicflow_jax/cli/generate.py."""

import sys

from musicflow_jax.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
