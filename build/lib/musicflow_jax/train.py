"""`python -m musicflow_jax.train`: an entry point; the command line is musicflow_jax/cli/train.py."""

import sys

from musicflow_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
