"""``python -m robx``: the command line, also as torchrun runs it (``torchrun ... -m robx train``)."""

from robx.cli.main import main

main()
