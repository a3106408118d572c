"""Weight conversion only: PyTorch checkpoints (HF folders, original encodec .th) -> converted Flax folders.

`torch_state` reads PyTorch-side files (torch imported lazily, only for .bin/.th/.pt) and holds the layout
transforms and rename rules; `t5`, `encodec`, `hubert` hold the per-model rules and the `convert_*` entry points.
Reading converted folders at run time is `musicflow_jax.weights` (torch-free; nothing at run time imports this
package).
"""
