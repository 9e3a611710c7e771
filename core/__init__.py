"""robx core: hook specs, plugin host, engine, attacks, data, models, metrics, config, errors.

The core never names a method; every method is a plugin (see ``robx.plugins``).
"""
