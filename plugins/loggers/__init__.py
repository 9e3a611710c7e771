"""Built-in epoch loggers (``register_loggers``, selected with ``--log``): one module each."""
