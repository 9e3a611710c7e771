"""Built-in commands beside train / eval / report: one registration module per command
(the ``register_commands`` hook), so data-level tools live outside the core and the CLI."""
