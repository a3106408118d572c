"""`python -m musicflow_jax.fit_kmeans`: an entry point; the command line is musicflow_jax/cli/fit_kmeans.py."""

import sys

from musicflow_jax.cli.fit_kmeans import main

if __name__ == "__main__":
    sys.exit(main())
