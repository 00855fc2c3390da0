"""The container runtime (container/: entrypoint, health checks, drain, keys) runs in the slim
serving image, which has no package of ours but the standard library for it: every import in the
folder, at any depth, is of the standard library or of the folder itself."""

from __future__ import annotations

import ast
import sys

from repo import REPO


def imported_modules(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module)
    return {name.split(".")[0] for name in modules}


def test_the_container_runtime_imports_only_the_standard_library():
    files = sorted((REPO / "container").glob("*.py"))
    assert {path.name for path in files} >= {"entrypoint.py", "healthcheck.py", "drain.py", "keys.py"}
    for path in files:
        outside = imported_modules(path.read_text()) - set(sys.stdlib_module_names) - {"container", "__future__"}
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_the_check_sees_a_third_party_import():
    assert imported_modules("import os\ndef f():\n    from requests import get\n") == {"os", "requests"}
