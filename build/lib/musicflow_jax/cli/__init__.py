"""The command lines: argparse only, each a thin layer over the Python API that turns flags into API values once
(the API validates them), with the shared conventions of _common.py (one-line errors, exit codes, --debug). Each is
`python -m musicflow_jax.<name>` (the entry modules musicflow_jax/<name>.py, or a package's __main__) and a console
script `musicflow-<name>`."""
