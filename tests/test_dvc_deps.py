"""Each DVC stage's deps cover every project file its entry point imports, transitively:
an edit anywhere a stage's code reaches reruns that stage."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml
from conftest import REPO

SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    """The file of an `sdlab...` module (package __init__ or module file), if it exists."""
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """Project files imported anywhere in `path` (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] == "sdlab":
                parts = name.split(".")
                for end in range(1, len(parts) + 1):  # parent packages run their __init__ too
                    file = module_file(".".join(parts[:end]))
                    if file is not None:
                        found.add(file)
    return found


def transitive_imports(entry: Path) -> set[Path]:
    seen, todo = set(), [entry]
    while todo:
        file = todo.pop()
        for imported in imported_files(file) - seen:
            seen.add(imported)
            todo.append(imported)
    return seen


def test_every_stage_depends_on_everything_its_entry_point_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        entry = REPO / "stages" / f"{name}.py"
        deps = [REPO / dep for dep in stage["deps"]]
        assert entry in deps, f"{name}: its entry point is not a dep"
        for file in transitive_imports(entry):
            if file.name == "__init__.py" and file.stat().st_size == 0:
                continue
            if not any(file == dep or dep in file.parents for dep in deps):
                missing.setdefault(name, []).append(str(file.relative_to(REPO)))
    assert not missing, f"dvc.yaml deps miss imported files: {missing}"


def test_no_stage_depends_on_code_it_does_not_import():
    """A code dep the stage never imports reruns it for nothing: an edit of the judges must not
    retrain the model."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    extra = {}
    for name, stage in stages.items():
        entry = REPO / "stages" / f"{name}.py"
        reached = transitive_imports(entry) | {entry}
        for dep in stage["deps"]:
            if dep.startswith(("src/", "stages/")):
                path = REPO / dep
                if not any(file == path or path in file.parents for file in reached):
                    extra.setdefault(name, []).append(dep)
    assert not extra, f"dvc.yaml deps on code the stage does not import: {extra}"


def test_the_import_walk_sees_imports_inside_functions(tmp_path):
    assert module_file("sdlab.judge") in transitive_imports(REPO / "stages" / "evaluate.py")
