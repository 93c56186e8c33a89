"""The architecture as a checked contract: import-linter's layers, and a pure contract/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_linter_contracts_hold():
    """The contracts in pyproject.toml: agent and collector apart, the stages layered."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "0 broken" in result.stdout


# msgspec: a JSON decoder in C that checks types as it decodes, no I/O; the
# collector's fast path for `readings` frames imports it (contract/protocol.py).
CONTRACT_MAY_IMPORT = {"msgspec"}


def test_the_contract_imports_nothing_but_the_standard_library_msgspec_and_itself():
    for path in sorted((ROOT / "contract").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names | CONTRACT_MAY_IMPORT or name.startswith(
                    "sensor_edge.contract"), f"{path.name} imports {name}"
