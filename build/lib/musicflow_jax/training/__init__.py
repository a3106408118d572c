"""Training: the one loop (loop.py) both trainers run - the flow stages (flow_trainer.py, its sharded step in
flow_step.py) and the codec (codec_trainer.py, codec_config.py) - with the state and optimizer they share
(state.py), orbax checkpoints (checkpoint.py), logs (logger.py), what the hosts agree on (hosts.py), fine-tuning
(finetune.py), runs read back and train.init_from (runs.py), and export to inference files (export.py)."""
