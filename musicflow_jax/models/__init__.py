"""The networks: the flow transformer both stages share (transformer.py, its blocks in layers.py) with its LoRA
adapters (lora.py) and its exported stage file (stage_file.py); the Flax ports of the frozen pretrained models (t5.py,
encodec.py, hubert.py, their PyTorch-exact layers in port_layers.py); the codec trainer's multi-scale spectrogram
discriminator (discriminator.py); flat parameter utilities (params.py)."""
