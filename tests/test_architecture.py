"""Import rules that keep responsibilities apart, checked by reading the imports (ast)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sqlcheck"

#: third-party package -> the only sqlcheck modules allowed to import it
ALLOWED = {
    "sqlfluff": {"lint_engine"},
    "typer": {"cli"},
    "rich": {"cli"},
    "sqlalchemy": {"database", "models", "repository", "retries", "worker"},
    "alembic": {"database", "migrations.env"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.parts[:2] == ("migrations", "versions"):
            continue
        yield ".".join(rel.parts), path


@pytest.mark.parametrize("package,allowed", sorted(ALLOWED.items()))
def test_only_allowed_modules_import(package, allowed):
    offenders = [name for name, path in modules() if package in imported_packages(path) and name not in allowed]
    assert offenders == [], f"{package} imported outside {sorted(allowed)}: {offenders}"


def test_states_is_a_stdlib_leaf():
    assert imported_packages(PACKAGE / "states.py") <= {"enum", "__future__"}
