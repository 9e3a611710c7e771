"""The hook reference (docs/hooks.md) stays in sync with core/hookspecs.py (datasette's rule)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from robx.core import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"


def documented_sections() -> dict[str, tuple[list[str], str]]:
    """``{hook: (arguments, section text)}`` from the ``### hook(args)`` headings."""
    text = DOCS.read_text()
    parts = re.split(r"^### (\w+)\(([^)]*)\)\s*$", text, flags=re.M)
    return {name: ([a.strip() for a in args.split(",") if a.strip()], body)
            for name, args, body in zip(parts[1::3], parts[2::3], parts[3::3])}


def test_every_hook_is_documented_with_its_arguments_and_nothing_else():
    sections = documented_sections()
    assert set(sections) == set(hookspecs.HOOK_NAMES)
    for name in hookspecs.HOOK_NAMES:
        expected = list(inspect.signature(getattr(hookspecs, name)).parameters)
        assert sections[name][0] == expected, f"docs/hooks.md: {name}({', '.join(sections[name][0])})"


def test_the_kind_of_every_hook_is_stated():
    sections = documented_sections()
    for name, (_, body) in sections.items():
        kind = ("Owned" if name in hookspecs.OWNED else "Registration" if name in hookspecs.REGISTRATION
                else None)
        if kind is not None:
            assert body.strip().startswith(kind), f"docs/hooks.md: {name} is {kind.lower()}"
        else:
            assert body.strip().startswith(("Shared", "Lifecycle")), f"docs/hooks.md: {name} has no kind"


def test_every_declaration_the_plugin_host_reads_is_documented():
    """Each class attribute core/plugins.py looks up on a plugin has a row in the table."""
    source = (Path(__file__).resolve().parent.parent / "core" / "plugins.py").read_text()
    read = set(re.findall(r'getattr\(self\.target, "(\w+)"', source)) | set(re.findall(r'getattr\(target, "(\w+)"', source))
    assert read >= {"name", "Options", "reads", "trains_on", "yields", "fallback"}
    text = DOCS.read_text()
    for attribute in sorted(read):
        assert f"| `{attribute}` |" in text, f"docs/hooks.md does not document the declaration {attribute!r}"
