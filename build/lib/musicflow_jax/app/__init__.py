"""The web demo (`python -m musicflow_jax.app`): the service over the Python API that the page's requests share
(studio.py) and the Gradio page (ui.py)."""
