"""`python -m musicflow_jax.train_codec`: an entry point; the command line is musicflow_jax/cli/train_codec.py."""

import sys

from musicflow_jax.cli.train_codec import main

if __name__ == "__main__":
    sys.exit(main())
