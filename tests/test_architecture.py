"""The design rules of docs/engine.md that code review alone would let slip, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from robx.core.discovery import BUILTIN_ORIGIN, available_plugins
from robx.core.registry import registry

# checks of the source text, counted apart from the behaviour tests: pytest -m source
pytestmark = pytest.mark.source

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_FILES = sorted(p for p in (ROOT / "plugins").rglob("*.py") if p.name not in ("__init__.py", "common.py"))
CORE_FILES = sorted((ROOT / "core").rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _code_strings(tree: ast.Module) -> set[str]:
    """String constants that are not docstrings."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


#: plugin packages (a product each, with hooks of its own): their modules may import their package
PLUGIN_PACKAGES = ("oversampling", "crowd")


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: p.name)
def test_no_plugin_imports_another_plugin(path):
    """Except its own package's modules, for a module of a plugin package."""
    own = f"robx.plugins.{path.parent.name}" if path.parent.name in PLUGIN_PACKAGES else None

    def allowed(module: str) -> bool:
        return module == "robx.plugins.common" or (own is not None and (module == own or module.startswith(own + ".")))

    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("robx.plugins"):
            assert allowed(node.module), f"{path.name} imports {node.module}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert not alias.name.startswith("robx.plugins.") or allowed(alias.name), f"{path.name} imports {alias.name}"


def test_a_method_that_is_a_composition_is_a_recipe_and_each_primitive_has_one_implementation():
    """srat = drw + separation and imbmix = copies + remix + swa are declared, not
    re-implemented: recipes implement no hook, and each primitive's helper is used by one
    plugin file (weight averages by the averaging plugins, Remix's rule by remix alone)."""
    specs = {spec.name: spec for spec in available_plugins().values() if spec.origin == BUILTIN_ORIGIN}
    assert specs["srat"].parts == ("drw", "separation") and specs["imbmix"].parts == ("copies", "remix", "swa")
    for spec in specs.values():
        if spec.parts:
            spec.check_recipe()  # no hooks of its own, every option routed to a part
    users = {helper: sorted(path.stem for path in PLUGIN_FILES if f"{helper}(" in path.read_text())
             for helper in ("add_to_average", "remix_label_factor", "supplementary_examples", "deferred_start_epoch")}
    assert users == {"add_to_average": ["cfa", "ema", "swa"], "remix_label_factor": ["remix"],
                     "supplementary_examples": ["copies"], "deferred_start_epoch": ["drw"]}


#: hooks and helpers that run while a run is built or started: what they set on the plugin is
#: derived again from the run's data and configuration on every resume, so it is not saved
BUILD_TIME = {"__init__", "load_state_dict", "check_run", "train_start", "trained_class_counts", "pair_counts"}


def test_plugins_save_and_restore_their_own_state():
    """No shared stash: a plugin keeps its state on itself and saves it through
    state_dict() / load_state_dict() (both or neither); a plugin whose hooks change its own
    attributes while it trains (beyond what is derived again at build time) saves them."""
    from robx.core.declarations import Plugin, saves_state

    stateful = set()
    for spec in available_plugins().values():
        if spec.origin != BUILTIN_ORIGIN:
            continue
        loads = getattr(getattr(spec.target, "load_state_dict", None), "__func__",
                        getattr(spec.target, "load_state_dict", None)) not in (None, Plugin.load_state_dict)
        assert saves_state(spec.target) == loads, f"plugin '{spec.name}' overrides only one of state_dict / load_state_dict"
        if saves_state(spec.target):
            stateful.add(spec.name)
    assert stateful == {"swa", "ema", "dafa", "fairtat", "cfa", "mingre", "free"}
    for path in PLUGIN_FILES:
        assert "stash" not in path.read_text(), f"{path.name} mentions a stash"
        for cls in [node for node in _tree(path).body if isinstance(node, ast.ClassDef)
                    and any(isinstance(base, ast.Name) and base.id == "Plugin" for base in node.bases)]:
            changed = {(method.name, node.attr) for method in cls.body if isinstance(method, ast.FunctionDef)
                       and method.name not in BUILD_TIME for node in ast.walk(method)
                       if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                       and isinstance(node.value, ast.Name) and node.value.id == "self"}
            saves = any(isinstance(method, ast.FunctionDef) and method.name == "state_dict" for method in cls.body)
            assert not changed or saves, f"{path.name}: {cls.name} changes {sorted(changed)} while training, unsaved"


#: Strings that coincide with a plugin name but mean something else in that core file.
def test_the_core_names_no_method_task_dataset_model_or_attack():
    """No `if` on a method, a task or a task's evaluation attack in the engine: core code
    holds none of their names."""
    found = registry()
    attacks = set(found.attacks)
    names = ({spec.name for spec in available_plugins().values() if spec.origin == BUILTIN_ORIGIN}
             | set(found.tasks) | set(found.datasets) | set(found.models) | attacks)
    assert {"classification", "regression", "digits", "synthetic", "smallcnn", "mlp", "stpgd", "autoattack"} <= names
    for path in CORE_FILES:
        named = _code_strings(_tree(path)) & names
        assert not named, f"core/{path.name} names {sorted(named)}"


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: p.name)
def test_no_plugin_runs_the_model_in_train_mode(path):
    """The engine owns every train-mode forward pass (plugins read views); plugins only hand
    the model to attacks, which run it in eval mode. tests/test_forward_passes.py checks the
    passes of real steps."""
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr != "train", f"{path.name}:{node.lineno} switches a module to train mode"
            called = node.func
            assert not (isinstance(called.value, ast.Name) and called.value.id == "state" and called.attr == "model"), (
                f"{path.name}:{node.lineno} calls state.model(...)")


METHOD_PLUGINS = [p for p in PLUGIN_FILES if p.parent.name in ("plugins", *PLUGIN_PACKAGES)]


@pytest.mark.parametrize("path", METHOD_PLUGINS, ids=lambda p: p.name)
def test_every_adversary_attacks_through_the_step_s_bound_attack(path):
    """One attack object: a plugin never builds an attack from the run's settings (the
    budget, victims, box, steps, norm and model are bound by the engine on ``step.attack``);
    the drift this prevents was FAIR-TAT indexing class_eps and ignoring the task's loss."""
    own = {"pgd", "fgsm", "saliency_point", "saliency_gradient", "random_start", "gaussian_start"}
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module == "robx.core.attacks":
            imported = {alias.name for alias in node.names} & own
            assert not imported, f"{path.name} imports {sorted(imported)} from robx.core.attacks; use step.attack"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "state":
            assert node.attr not in ("class_eps", "class_alpha"), (
                f"{path.name}:{node.lineno} reads state.{node.attr}; the attack's budget is bound on step.attack")


def test_the_core_asks_the_task_whether_it_labels_targets():
    """Whether labels are per target is the task's declaration (Task.labels_per_target), not a
    guess from the labels' shape in the engine, the state, the data protocol or the oversampler
    (it stood for "the crime task"); the callers hand the protocol the task's answer."""
    for path in [*sorted((ROOT / "core" / "engine").glob("*.py")), ROOT / "core" / "state.py",
                 ROOT / "core" / "data.py", ROOT / "plugins" / "oversampling" / "evaluation.py"]:
        source, name = path.read_text(), path.name
        assert "labels.dim() > 1" not in source and "labels.dim() == 1" not in source and \
            "labels.dim() != 1" not in source, f"core/{name} infers per-target labels from a shape"


def test_the_class_statistics_hold_no_task_s_fields():
    """SplitStats has counts and the task's metric on clean and attacked inputs; what only one
    task records (classification's confusion tables) goes in its ``tables`` by name."""
    import dataclasses

    from robx.core.stats import SplitStats

    assert [field.name for field in dataclasses.fields(SplitStats)] == ["counts", "clean", "robust", "metric",
                                                                         "tables"]


def test_every_source_package_is_in_the_distribution():
    """pyproject lists packages by hand (the source folders map onto robx.*): a folder left out
    installs from a checkout (-e) but is missing from a wheel, as robx.plugins.tasks once was."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {package: ROOT / folder for package, folder in setup["package-dir"].items()}
    expected = set()
    for package, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            expected.add(".".join((package, *relative)))
    assert expected == set(setup["packages"])


def test_data_level_tools_are_plugin_packages_with_their_own_hooks():
    """The CLI defines robx's own commands only (the ones no plugin may take); oversample and
    crowd arrive through register_commands like any third-party command, from plugin packages
    that add their own registration hooks (add_hookspecs); the core imports neither package
    nor scikit-learn, imbalanced-learn or crowd-kit at module level."""
    from robx.cli.main import OWN_COMMANDS, app
    from robx.core.discovery import added_hookspecs

    registered = registry().commands
    assert {"oversample", "crowd"} <= set(registered)
    assert all(spec.origin.endswith("(built-in)") for spec in registered.values() if spec.name in ("oversample", "crowd"))
    assert {info.name for info in app.registered_commands} - set(registered) == set(OWN_COMMANDS) == {
        "train", "eval", "audit", "report", "plugins"}
    added = {hook: (collects.kind, origin.origin) for origin in added_hookspecs()
             for hook, collects in origin.registers.items()}
    assert added == {"register_oversamplers": ("oversampler", "oversampling (built-in)"),
                     "register_crowd_learners": ("crowd learner", "crowd (built-in)")}
    assert {"glgan", "smote"} <= set(registry().entries["oversampler"])
    assert {"iced", "mv-lr"} <= set(registry().entries["crowd learner"])
    for path in CORE_FILES:
        for node in ast.walk(_tree(path)):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                assert module.split(".")[0] not in ("sklearn", "imblearn", "crowdkit"), f"core/{path.name} imports {module}"


#: core's floors, lowest first: a module imports only from its own floor or one below
#: (docs/engine.md, "Layers"); within a floor the imports form no cycle either
CORE_FLOORS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "options", "files", "metrics", "logging", "config", "stats", "data", "averaging", "rundir",
               "distributed"}),  # values, errors and I/O
    frozenset({"task", "attacks", "attack_plans", "models", "state", "evaluate", "report", "hookspecs", "declarations",
               "registered"}),  # contracts
    frozenset({"discovery", "selection", "plugins", "registry"}),  # discovery, selection, the host, the registries
    frozenset({"engine", "engine.build", "engine.step", "engine.checkpoints", "engine.evaluation", "engine.loop",
               "engine.best", "engine.collapse"}),
    # the engine
)


def _core_imports() -> dict[str, set[str]]:
    """Every import between core modules, at the top, inside functions (lazy) or under
    TYPE_CHECKING alike: a lazy import is still a dependency."""
    modules = {".".join(path.relative_to(ROOT / "core").with_suffix("").parts).removesuffix(".__init__")
               .removesuffix("__init__") or "core": path for path in CORE_FILES}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(_tree(path)):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("robx.core"):
                base = node.module.removeprefix("robx.core").lstrip(".")
                targets = [base] + [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name.removeprefix("robx.core.") for alias in node.names
                           if alias.name.startswith("robx.core.")]
            edges[name] |= {target for target in targets if target in modules and target != name}
    return edges


def test_core_reads_as_floors_without_cycles():
    edges = _core_imports()
    floor = {module: level for level, members in enumerate(CORE_FLOORS) for module in members}
    assert set(edges) - {"core"} == set(floor), f"core modules not in a floor: {sorted(set(edges) - set(floor))}"
    for module, imported in edges.items():
        for target in imported:
            if module in floor:
                assert floor[target] <= floor[module], f"core/{module} imports {target}, a floor above it"
    seen: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:  # depth-first: a module met again on its own path is a cycle
        seen[module] = 1
        for target in edges[module]:
            assert seen.get(target) != 1, f"import cycle: {' -> '.join(path + [module, target])}"
            if target not in seen:
                visit(target, path + [module])
        seen[module] = 2

    for module in edges:
        if module not in seen:
            visit(module, [])


def test_core_imports_no_plugin_and_no_command_line():
    """The host loads the built-in plugin list by name (robx.plugins.DEFAULT_PLUGINS, as
    pytest's and llm's default plugins); nothing else in core imports a plugin or the CLI."""
    for path in CORE_FILES:
        for node in ast.walk(_tree(path)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [module or ""]
            for name in names:
                if name.startswith("robx.cli") or (name.startswith("robx.plugins") and not (
                        path.name == "discovery.py" and name == "robx.plugins")):
                    raise AssertionError(f"{path.relative_to(ROOT)} imports {name}")


def test_core_modules_and_functions_stay_small_enough_to_read():
    """No core module over 400 lines, no core or command-line function over 60: a reader holds
    one module, and one function, in their head."""
    for path in CORE_FILES:
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines"
    for path in [*CORE_FILES, *sorted((ROOT / "cli").glob("*.py"))]:
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.relative_to(ROOT)}: {node.name} has {length} lines"
