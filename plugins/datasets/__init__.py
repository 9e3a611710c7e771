"""Built-in datasets, one registered module each (``register_datasets``)."""
