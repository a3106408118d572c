"""Inference: the MusicFlow cascade and its Python API (cascade.py), the checks of its inputs (checks.py), the model
folder it loads (model_folder.py), its result (generation.py), long-form windowing (longform.py) and length
buckets (buckets.py)."""
