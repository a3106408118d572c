"""Feature backends: what the two flow stages model and how audio is recovered from it.

"encodec" (default, the paper's setup): semantic = HuBERT (+ k-means centroid) features at 50 Hz, acoustic =
continuous Encodec latents at 75 Hz, decoded by the Flax Encodec decoder. Needs converted pretrained weights.
"mel" (weight-free alternative, musicflow_jax/backends/mel.py): semantic = chroma + coarse band energies at 50 Hz,
acoustic = log-mel frames at 75 Hz, decoded with Griffin-Lim. Used by the bundled model, since no pretrained
codec weights are available offline. Both expose the same interfaces (see `load_backend` in pipeline.py).
"""
