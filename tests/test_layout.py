"""The layout of mri2ct keeps its dependencies pointing down: the commands on top, then training,
inference, data and common, each importing only what lies below it; nn3d knows nothing of mri2ct.
Imports are read with `ast`, so nothing is imported to check them."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "mri2ct")
COMMANDS = ("train", "evaluate", "infer", "inspect", "visualize", "export")
# What each part of mri2ct may import from mri2ct (itself always).
MAY_IMPORT = {
    "common": set(),
    "data": {"common"},
    "inference": {"common", "data"},
    "training": {"common", "data", "inference", "model"},
    "model": set(),
    "commands": {"common", "data", "inference", "training", "model"},
}
MAX_DOCSTRING_LINES = 40


def python_files(folder):
    for directory, _, names in os.walk(folder):
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.join(directory, name)


def module_name(path):
    """'mri2ct.training.loop' for ROOT/mri2ct/training/loop.py ('mri2ct.data' for its __init__.py)."""
    parts = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path):
    """Every module `path` imports, relative imports resolved, as dotted names."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)   # `from mri2ct import train`


def part(module):
    """The part of mri2ct a dotted name belongs to: 'data', 'training', ..., 'commands'; None for
    the package itself and its version (mri2ct/__init__.py imports nothing)."""
    names = module.split(".")
    if len(names) == 1 or names[1] == "__version__":
        return None
    return "commands" if names[1] in COMMANDS else names[1]


MODULES = list(python_files(PACKAGE))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: os.path.relpath(path, ROOT))
def test_dependencies_point_down(path):
    own = part(module_name(path))
    allowed = MAY_IMPORT.get(own, set()) | {own}
    upward = sorted({module for module in imported_modules(path)
                     if module.split(".")[0] == "mri2ct" and part(module) not in allowed | {None}})
    assert not upward, f"{os.path.relpath(path, ROOT)} ({own}) imports {upward}, above it or beside it"


def test_commands_do_not_import_each_other():
    for name in COMMANDS:
        path = os.path.join(PACKAGE, f"{name}.py")
        others = sorted({module for module in imported_modules(path)
                         if module.split(".")[:2] in [["mri2ct", other] for other in COMMANDS if other != name]})
        assert not others, f"mri2ct/{name}.py imports the command(s) {others}: share through the library"


def test_nn3d_knows_nothing_of_mri2ct():
    for path in python_files(os.path.join(ROOT, "nn3d")):
        assert not [module for module in imported_modules(path) if module.split(".")[0] == "mri2ct"], path


@pytest.mark.parametrize("path", MODULES, ids=lambda path: os.path.relpath(path, ROOT))
def test_module_docstrings_are_short(path):
    with open(path, encoding="utf-8") as file:
        docstring = ast.get_docstring(ast.parse(file.read()), clean=False) or ""
    lines = len(docstring.splitlines())
    assert lines <= MAX_DOCSTRING_LINES, \
        f"{os.path.relpath(path, ROOT)}: a docstring of {lines} lines; long explanations belong in the README"
