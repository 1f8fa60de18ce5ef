"""Training over stores (datasets, samplers, backbones, methods, the loop). Built by the trainer issue."""
