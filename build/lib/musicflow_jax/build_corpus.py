"""`python -m musicflow_jax.build_corpus`: an entry point; the command line is musicflow_jax/cli/build_corpus.py."""

import sys

from musicflow_jax.cli.build_corpus import main

if __name__ == "__main__":
    sys.exit(main())
