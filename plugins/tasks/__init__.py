"""Built-in tasks, one registered module each (``register_tasks``)."""
