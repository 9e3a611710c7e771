"""The references in docs/ stay in sync with the code (datasette's rule): the hooks
(docs/hooks.md against core/hookspecs.py) and the methods (docs/methods.md against the plugins'
docstrings and options); and the docs and code cite only what ships in the repository."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from robx.core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "hooks.md"


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
        kind = ("Owned" if name in hookspecs.OWNED or name == "class_policy"
                else "Registration" if name in hookspecs.REGISTRATION else None)
        if kind is not None:
            assert body.strip().startswith(kind), f"docs/hooks.md: {name} is {kind.lower()}"
        else:
            assert body.strip().startswith(("Shared", "Lifecycle")), f"docs/hooks.md: {name} has no kind"


def test_every_declaration_the_plugin_host_reads_is_documented_and_typed():
    """Each class attribute discovery looks up on a plugin is a declaration robx checks, has a
    row in docs/hooks.md's table and a typed default on robx.Plugin."""
    from robx import Plugin
    from robx.core.declarations import DECLARATIONS

    source = (ROOT / "core" / "discovery.py").read_text() + (ROOT / "core" / "declarations.py").read_text()
    read = set(re.findall(r'getattr\(self\.target, "(\w+)"', source)) | set(re.findall(r'getattr\(target, "(\w+)"', source))
    assert read >= {"name", "Options", "reads", "trains_on", "yields", "fallback", "policy", "identity_adversary"}
    assert read <= set(DECLARATIONS) | {"Options", "state_dict"}  # state_dict: a method, docs/hooks.md "Plugin state"
    text = DOCS.read_text()
    for attribute in sorted(set(DECLARATIONS) | {"Options"}):
        assert f"| `{attribute}` |" in text, f"docs/hooks.md does not document the declaration {attribute!r}"
        assert attribute in Plugin.__annotations__, f"robx.Plugin does not type {attribute!r}"


def test_the_method_reference_is_generated_from_the_built_in_plugins():
    from robx.cli.reference import methods_reference
    from robx.core.discovery import BUILTIN_ORIGIN, available_plugins

    text = (ROOT / "docs" / "methods.md").read_text()
    marker = "<!-- method reference -->\n"
    assert marker in text
    built_in = [spec for spec in available_plugins().values() if spec.origin == BUILTIN_ORIGIN]
    assert text.split(marker, 1)[1] == methods_reference(built_in), (
        "docs/methods.md is stale: regenerate its part below the marker with `robx plugins --markdown`")
    # each method's defaults are stated where the reader looks for them
    assert "| `srat.temperature` | `float` | `0.1` |" in text
    assert "| `dafa.lam` | `float` | `1.0` |" in text


def test_nothing_in_the_repository_cites_files_that_do_not_ship_with_it():
    """The team's design notes (DESIGN.md, METHODS.md, PROTOCOLS.md) are not in the repository:
    users must find every reference in docs/."""
    cited = re.compile(r"\b(DESIGN|METHODS|PROTOCOLS)\.md\b")
    folders = ("core", "cli", "plugins", "kernels", "benchmarks", "tests", "docs", "robx")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in folders for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".md", ".toml") and path != Path(__file__).resolve()
        and cited.search(path.read_text(errors="replace"))
    ] + (["README.md"] if cited.search((ROOT / "README.md").read_text()) else [])
    assert offenders == []


def test_every_python_block_of_the_readme_runs_as_written(tmp_path, monkeypatch):
    """Each Python block of the README is a module a newcomer saves as its first line names:
    each imports and runs its definitions, and the registration example trains with the
    README's own command (the plugin example trains in tests/test_plugins.py)."""
    import json
    import subprocess
    import sys
    import types

    import pytest

    from test_plugins import _cli_env, install_distribution

    readme = (ROOT / "README.md").read_text()
    blocks = dict(re.findall(r"```python\n# (\w+)\.py\n(.*?)```", readme, re.S))
    assert len(blocks) == readme.count("```python"), "a README Python block does not start with '# module.py'"
    assert set(blocks) == {"first_run", "robx_minority_boost", "robx_stripes"}
    monkeypatch.chdir(tmp_path)  # first_run.py trains into runs/
    for name, source in blocks.items():
        module = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
        exec(compile(source, f"README.md: {name}.py", "exec"), module.__dict__)
    entry = re.search(r"the entry point `(\w+) = \"(\w+)\"`, `(robx train --dataset \w+)`", readme.replace("\n", " "))
    assert entry, "the README lost its registration example's entry point and command"
    name, module, command = entry.groups()
    site = install_distribution(tmp_path / "site", module, blocks[module], {name: ""})
    done = subprocess.run([sys.executable, "-m", "robx.cli.main", *command.split()[1:]], capture_output=True,
                          text=True, cwd=tmp_path, env=_cli_env(site, tmp_path / "unused"), timeout=600)
    assert done.returncode == 0, done.stderr
    (first, run_dir) = sorted((tmp_path / "runs").iterdir(), key=lambda path: path.name.startswith("stripes"))
    assert first.name.startswith("digits-cb-seed0-") and len(sys.modules["first_run"].run.report.rows) == 10
    report = json.loads((run_dir / "report.json").read_text())
    assert report["dataset"] == "stripes" and report["model"] == "tinynet"
    assert report["class_names"] == ["horizontal", "vertical"] and report["class_counts"] == [270, 30]  # 9 : 1
    assert report["attack"]["eps"] == pytest.approx(8 / 255) and report["attack"]["steps"] == 20  # the task's
    assert report["summary"]["standard"]["overall"] > 0.9  # stripes are easy: it learnt them
