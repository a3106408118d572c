"""Pod-scale checks without the pod: the real train and generation steps compiled ahead of time for TPU topologies
(libtpu's compile-only devices) or this machine's devices, with per-chip memory, FLOPs, collectives and a roofline
estimate (`python -m musicflow_jax.aot`)."""
