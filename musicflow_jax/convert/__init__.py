"""Weight conversion: PyTorch checkpoints (HF folders, original encodec .th) -> Flax safetensors + config.json.

`io` is the torch-free runtime side (read converted folders, check names/shapes, fill NNX models);
`checkpoint` reads PyTorch-side files (torch imported lazily, only for .bin/.th/.pt);
`t5`, `encodec`, `hubert` hold the per-model name/layout rules and `convert_*` entry points.
"""
