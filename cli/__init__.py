"""robx command line (Typer + rich)."""
