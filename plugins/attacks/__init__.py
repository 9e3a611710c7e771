"""Built-in evaluation attacks, one registered module each (``register_attacks``).

An attack here decides only what makes it the attack it is; the engine binds it to the
model, the batch, each example's budget, the task's input box and loss and the number of
steps (:class:`robx.core.attacks.AttackPlan`), the same way for validation, ``robx eval``,
``robx audit`` and the Python API. A task names the attacks that apply to it
(``Task.attacks``).
"""
