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
