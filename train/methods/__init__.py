"""One module per self-supervised method; `METHODS` maps the `--method` name to its class."""
