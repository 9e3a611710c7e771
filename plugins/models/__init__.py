"""Built-in models, one registered module per family (``register_models``)."""
