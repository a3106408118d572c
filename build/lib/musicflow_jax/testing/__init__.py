"""Test helpers importable by the tests, the tools and users' own tests: tiny randomly initialised PyTorch reference
models saved with save_pretrained (tiny_models.py), a tiny two-stage model folder (model_folders.py), small record
folders with known content (records.py), and one process of a multi-process training run (multiprocess_driver.py).
"""
