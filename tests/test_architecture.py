"""The dependency rule between the planes (ARCHITECTURE.md, "Layout and dependency rule").

Read from the source with `ast`, so a violation fails here even in a module no other test
imports, and the sidecar image provably never drags DuckDB or policyd's compiler in.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLANES = ("sidecar", "policyd", "collector", "fakeprovider", "sidegate")

# The contracts each plane may reach in another: dependency-free schema modules only.
CONTRACTS = {"policyd.bundle", "policyd.status", "policyd.quota_wire", "collector.record"}
ALLOWED_ACROSS = {
    "sidecar": CONTRACTS | {"sidegate.logs"},
    "policyd": {"collector.record", "sidegate.logs"},
    "collector": {"sidegate.logs", "sidegate.natsd"},
    "fakeprovider": {"sidegate.logs"},
    "sidegate": None,  # the CLI and `up` glue may use every plane
}
HEAVY_FOR_SIDECAR = {"duckdb", "pyarrow", "yaml", "genai_prices"}
STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from sidegate import logs` is the module sidegate.logs.
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules(plane: str) -> list[Path]:
    return sorted((ROOT / plane).rglob("*.py"))


@pytest.mark.parametrize("plane", [p for p in PLANES if ALLOWED_ACROSS[p] is not None])
def test_a_plane_imports_other_planes_only_through_their_contracts(plane: str) -> None:
    allowed = ALLOWED_ACROSS[plane]
    assert allowed is not None
    violations = []
    for path in _modules(plane):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in PLANES and top != plane:
                module = ".".join(name.split(".")[:2])
                if module not in allowed:
                    violations.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not violations, "\n".join(violations)


def test_the_sidecar_never_imports_storage_or_policy_compilers() -> None:
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules("sidecar")
        for name in _imports(path)
        if name.split(".")[0] in HEAVY_FOR_SIDECAR
    ]
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("contract", sorted(CONTRACTS))
def test_contract_modules_depend_on_msgspec_and_the_standard_library_only(contract: str) -> None:
    path = ROOT / (contract.replace(".", "/") + ".py")
    outside = [
        name
        for name in _imports(path)
        if name.split(".")[0] not in STDLIB | {"msgspec", "__future__"} and name not in CONTRACTS
    ]
    assert not outside, f"{contract} imports {outside}"
