"""The shape of the product a newcomer relies on: modules and functions small enough to read, stage packages whose
contracts name packages, and a test module for every product module. Checked on the source, so that a change that
breaks the shape fails here with the module or function named, not in a reviewer's head."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The folders that install into the `relevance` namespace (pyproject.toml [tool.setuptools.package-dir]).
PRODUCT = {"relevance": "relevance", "serving": "relevance.serving", "pipelines": "relevance.pipelines",
           "components": "relevance.components"}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
# Data, not logic: the synthetic shop's vocabularies and generators are one long, flat story.
SIZE_EXCEPTIONS = {"relevance/data/synthetic.py"}


def product_modules() -> dict[str, Path]:
    """Every product module by its installed dotted name (packages' __init__ and __main__ left out)."""
    modules = {}
    for folder, namespace in PRODUCT.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name in ("__init__.py", "__main__.py") or "feature_repo" in path.parts:
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            modules[".".join((namespace, *parts))] = path
    return modules


def test_no_module_is_too_long_to_read():
    long = {str(path.relative_to(ROOT)): n for path in product_modules().values()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
            and str(path.relative_to(ROOT)) not in SIZE_EXCEPTIONS}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {long}"


def test_no_function_is_too_long_to_read():
    long = {}
    for path in product_modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_product_module_has_a_test_module_or_is_named_in_one():
    """tests/ mirrors the packages: relevance/teacher/train.py → tests/teacher/test_train.py, serving/server.py →
    tests/serving/test_server.py. A module without one must be imported by name in some test module."""
    imported = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    missing = []
    for name, path in product_modules().items():
        rel = path.relative_to(ROOT)
        parts = rel.parts[1:] if rel.parts[0] == "relevance" else rel.parts
        mirror = ROOT / "tests" / Path(*parts[:-1]) / f"test_{path.stem}.py"
        if not mirror.exists() and name not in imported:
            missing.append(f"{name} (no {mirror.relative_to(ROOT)}, and no test imports it)")
    assert not missing, "product modules without a test: " + "; ".join(missing)


def test_layer_contracts_name_packages_not_modules():
    """The import-linter contracts list the core's packages: a new module inside a package needs no edit there,
    and a new top-level module (one that belongs to no stage) fails the exhaustive layers contract."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")
    named = {name.strip("()") for name in layers["layers"]}
    packages = {p.name for p in (ROOT / "relevance").iterdir() if (p / "__init__.py").exists()}
    assert packages <= named, f"stage packages missing from the layers contract: {sorted(packages - named)}"
    # The chain (one module: where each step's output lives and the step cache) is the one top-level module.
    modules = {p.stem for p in (ROOT / "relevance").glob("*.py")} - {"__init__"}
    assert named & modules <= {"chain"}, f"the contract names modules instead of packages: {sorted(named & modules)}"
    # The core is every layer below the platform adapters: the forbidden-frameworks contract must name each one.
    core = [name.strip("()") for name in layers["layers"]]
    core = core[core.index("platform") + 1:]
    forbidden = next(c for c in contracts if "framework" in c["name"])
    assert set(forbidden["source_modules"]) == {f"relevance.{name}" for name in core}, forbidden["source_modules"]


def test_every_package_is_in_the_wheel():
    """A stage package left out of [tool.setuptools] packages would be missing from the installed product."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join((namespace, *p.parent.relative_to(ROOT / folder).parts))
             for folder, namespace in PRODUCT.items() for p in (ROOT / folder).rglob("__init__.py")}
    assert found <= listed, f"packages not in pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
