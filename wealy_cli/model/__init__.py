"""Stage 2: the WEALY network, its losses and training, the original checkpoints, the hub
registry and model cards."""
