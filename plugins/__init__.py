"""Built-in plugins: one module per method or baseline (see ``robx.core.plugins.DEFAULT_PLUGINS``)."""
