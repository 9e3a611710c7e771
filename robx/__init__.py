"""robx: adversarial training for imbalanced data and class-fair robustness.

Write a plugin with :data:`hookimpl`; the hooks are documented in
:mod:`robx.core.hookspecs`.
"""

__version__ = "0.1.0"

from robx.core.hookspecs import Collects, hookimpl, hookspec  # noqa: E402
from robx.core.state import Step, TrainState  # noqa: E402

__all__ = ["__version__", "Collects", "hookimpl", "hookspec", "Step", "TrainState"]
