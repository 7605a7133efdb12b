"""The package's import contract, read from the source (every import, those inside functions included):

    base (errors, reporting, sharding, chat) < objectives < model, data < training < inference
    < evaluation < plots < aot, sweeping < cli < the CLI mains (train, evaluate, compile, sweep,
    generate, probe, export)

A module imports only modules of a lower layer or of its own group (model and data are separate groups of
one layer, so neither imports the other; so are aot and sweeping, and each CLI main). The figures (plots)
sit below the sweeps, which draw their summary with them. No module
imports another module's private (`_name`) attribute, and every package's __init__ has a docstring that
says what the package owns. A failure lists every violation, one per line.
"""
from __future__ import annotations

import ast
import pathlib

PACKAGE = "deft_jax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE
MAINS = ("train", "evaluate", "compile", "sweep", "generate", "probe", "export")
# (layer, groups): a group is a top-level module or subpackage of deft_jax.
LAYERS = (
    (0, ("errors", "reporting", "sharding", "chat", "")),  # "" is deft_jax/__init__.py
    (1, ("objectives",)),
    (2, ("model",)), (2, ("data",)),
    (3, ("training",)),
    (4, ("inference",)),
    (5, ("evaluation",)),
    (6, ("plots",)),
    (7, ("aot",)), (7, ("sweeping",)),
    (8, ("cli",)),
    *((9, (main,)) for main in MAINS),
)
GROUP = {name: (layer, names) for layer, names in LAYERS for name in names}


def _modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """{dotted module name: path} for every .py file of the package."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (PACKAGE,) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _group(module: str) -> tuple[int, tuple[str, ...]] | None:
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else ""
    return GROUP.get(head)


def _imports(module: str, path: pathlib.Path, modules: dict[str, pathlib.Path]):
    """(line, imported module, imported names, aliases) for every project import in the file; a `from x
    import y` where x.y is a module counts as importing x.y."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield node.lineno, alias.name, (), {alias.asname or alias.name.split(".")[0]: alias.name}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            plain = []
            for alias in node.names:
                child = f"{source}.{alias.name}"
                if child in modules:
                    yield node.lineno, child, (), {alias.asname or alias.name: child}
                else:
                    plain.append(alias.name)
            if plain:
                yield node.lineno, source, tuple(plain), {}


def _private_attributes(path: pathlib.Path, aliases: dict[str, str]):
    """(line, module, attribute) for `alias._name` where alias is a project module imported in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            yield node.lineno, aliases[node.value.id], node.attr


def layering_violations(root: pathlib.Path = ROOT) -> list[str]:
    """One line per violation: 'deft_jax/x.py:LINE: what imports what, and which rule it breaks'."""
    modules = _modules(root)

    def _where(path: pathlib.Path, line: int) -> str:
        return f"{path.relative_to(root.parent)}:{line}"

    problems = []
    for module, path in modules.items():
        own = _group(module)
        if own is None:
            problems.append(f"{_where(path, 1)}: {module} belongs to no layer; add it to LAYERS in "
                            f"tests/test_layering.py")
            continue
        aliases = {}
        for line, target, names, bound in _imports(module, path, modules):
            aliases.update(bound)
            theirs = _group(target)
            if theirs is None:
                problems.append(f"{_where(path, line)}: {module} imports {target}, which belongs to no layer")
            elif theirs[1] != own[1] and theirs[0] >= own[0]:
                kind = "a CLI main" if target.split(".")[-1] in MAINS and target.count(".") == 1 else (
                    "a higher layer" if theirs[0] > own[0] else "a sibling of its layer")
                problems.append(f"{_where(path, line)}: {module} (layer {own[0]}) imports {target} "
                                f"(layer {theirs[0]}): {kind}")
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != module:
                    problems.append(f"{_where(path, line)}: {module} imports the private name {name} from "
                                    f"{target}")
        for line, target, attribute in _private_attributes(path, aliases):
            if target != module:
                problems.append(f"{_where(path, line)}: {module} uses the private name {attribute} of {target}")
        if path.name == "__init__.py" and not ast.get_docstring(ast.parse(path.read_text())):
            problems.append(f"{_where(path, 1)}: package {module} has no docstring saying what it owns")
    return problems


def test_the_import_contract_holds():
    problems = layering_violations()
    assert not problems, f"{len(problems)} import-contract violation(s):\n" + "\n".join(problems)


def test_the_contract_sees_what_it_forbids(tmp_path):
    """The checker itself: a lazy upward import, a sibling import, a private name and a bare __init__ are
    each reported (so a passing contract is not a checker that sees nothing)."""
    fake = tmp_path / PACKAGE
    for folder in ("objectives", "model", "data"):
        (fake / folder).mkdir(parents=True)
    (fake / "__init__.py").write_text('"""The package."""\n')
    (fake / "objectives" / "__init__.py").write_text('"""Objectives."""\n')
    (fake / "objectives" / "core.py").write_text("def f():\n    from deft_jax.training import step\n")
    (fake / "model" / "__init__.py").write_text("")
    (fake / "model" / "decoder.py").write_text("from deft_jax.data import records\n"
                                               "from deft_jax.objectives.core import _hidden\n")
    (fake / "data" / "__init__.py").write_text('"""Data."""\n')
    (fake / "data" / "records.py").write_text("from deft_jax import objectives\nx = objectives._private\n")
    (fake / "training").mkdir()
    (fake / "training" / "__init__.py").write_text('"""Training."""\n')
    (fake / "training" / "step.py").write_text("")
    problems = "\n".join(layering_violations(fake))
    assert "deft_jax.objectives.core (layer 1) imports deft_jax.training.step (layer 3): a higher layer" in problems
    assert "deft_jax.model.decoder (layer 2) imports deft_jax.data.records (layer 2): a sibling" in problems
    assert "imports the private name _hidden from deft_jax.objectives.core" in problems
    assert "uses the private name _private of deft_jax.objectives" in problems
    assert "package deft_jax.model has no docstring" in problems
    assert len(problems.splitlines()) == 5
