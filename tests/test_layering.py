"""Model code is single-device code, and nothing inside vistok/ is a script (STYLE.md rules 4 and 10)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vistok"
FORBIDDEN = ("lightning", "pytorch_lightning", "hydra", "wandb", "torch.distributed", "submitit")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODEL_FILES = sorted([*PACKAGE.glob("tokenizers/**/*.py"), *PACKAGE.glob("models/**/*.py")])


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_model_code_imports_no_training_stack(path):
    bad = sorted(m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}; model code must stay single-device"


def test_checker_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch.distributed as dist\nfrom lightning import Trainer\n")
    assert {"torch.distributed", "lightning"} <= imported_modules(bad)


def test_nothing_in_the_package_is_a_script():
    scripts = [p for p in PACKAGE.rglob("*.py") if "__main__" in p.read_text()]
    assert not scripts, f"run entry points as python -m scripts.X, not {scripts}"


def test_no_top_level_package_shadows_libraries():
    root = PACKAGE.parent
    for name in ("tokenizers", "data", "models", "src", "utils"):
        assert not (root / name / "__init__.py").exists(), f"top-level package '{name}' would shadow imports"


# ---- package layers (DESIGN.md: model code is single-device, sharding lives in one file, exports load without
# the training stack) ----------------------------------------------------------------------------------------


def package_imports(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{unit: the other units it imports}, a unit being a subpackage (`training`) or top-level module (`export`)
    of vistok; imports inside functions count too."""
    edges: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        source = path.relative_to(root).parts[0].removesuffix(".py")
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[0] == root.name and len(parts) > 1 and parts[1] != source:
                edges.setdefault(source, set()).add(parts[1])
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle of units (a list that starts and ends with the same unit), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once every path from it is explored

    def visit(unit: str, path: list[str]) -> list[str] | None:
        state[unit], path = "open", path + [unit]
        for nxt in sorted(edges.get(unit, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path)):
                return cycle
        state[unit] = "done"
        return None

    for unit in sorted(edges):
        if unit not in state and (cycle := visit(unit, [])):
            return cycle
    return None


def test_no_import_circle_between_packages():
    cycle = find_cycle(package_imports())
    assert cycle is None, f"import circle between vistok packages: {' -> '.join(cycle)}"


def test_cycle_finder_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("lower, upper", [("generation", "training"), ("models", "training"),
                                          ("models", "generation"), ("tokenizers", "models"),
                                          ("eval", "training"), ("data", "training")])
def test_lower_layers_do_not_import_higher_ones(lower, upper):
    assert upper not in package_imports().get(lower, set()), f"vistok.{lower} imports vistok.{upper}"


def test_sharding_lives_in_one_file():
    sharding = PACKAGE / "training" / "sharding.py"
    users = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p != sharding
             and any(m == "torch.distributed.fsdp" or m.startswith("torch.distributed.fsdp.")
                     for m in imported_modules(p))]
    assert not users, f"{users} import torch.distributed.fsdp; sharding code belongs in training/sharding.py"


LIGHT_MODULES = ["export.py", "hub.py", "checkpoint_files.py", "untrusted.py", "export_diffusers.py"]


@pytest.mark.parametrize("name", LIGHT_MODULES)
def test_export_side_loads_without_the_training_stack(name):
    """`vistok.load_tokenizer`, `scripts.export` and `load_generator` run where only torch is installed: these
    modules (and the vistok modules they import at the top) import no Lightning, Hydra or wandb."""
    heavy = ("lightning", "pytorch_lightning", "hydra", "wandb")
    seen, todo = set(), [PACKAGE / name]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        bad = sorted(m for m in names if m.split(".")[0] in heavy)
        assert not bad, f"{path.relative_to(PACKAGE)} (reached from {name}) imports {bad} at module level"
        todo += [PACKAGE.parent / (m.replace(".", "/") + ".py") for m in names if m.startswith("vistok.")]
        todo += [PACKAGE.parent / m.replace(".", "/") / "__init__.py" for m in names if m.startswith("vistok.")]
