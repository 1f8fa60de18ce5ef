"""Imports only go down: data_specs -> stores -> pictures -> preprocess | train -> eval -> the CLI (motionssl/).

Every module's imports are read with `ast` (function-level and relative imports included). A module may import its
own layer's package and any layer below; preprocess and train are siblings and import neither each other."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Layer folder -> (package, rank). Equal ranks are siblings.
LAYERS = {
    "data_specs": ("motionssl.data_specs", 0),
    "stores": ("motionssl.stores", 1),
    "pictures": ("motionssl.pictures", 2),
    "preprocess": ("motionssl.preprocess", 3),
    "train": ("motionssl.train", 3),
    "eval": ("motionssl.eval", 4),
    "motionssl": ("motionssl", 5),  # the command line: cli, __main__, the version
}
RANK = {package: rank for package, rank in LAYERS.values()}


def layer_of(module: str) -> str:
    """The layer package a dotted `motionssl...` module belongs to (the top package itself is the CLI layer)."""
    parts = module.split(".")
    if len(parts) >= 2 and f"motionssl.{parts[1]}" in RANK:
        return f"motionssl.{parts[1]}"
    return "motionssl"


def imported_modules(source: str, module: str, *, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) for every motionssl import in `source`, the module `module`."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "motionssl"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "motionssl":
                continue
            if target == "motionssl":  # `from motionssl import stores` imports the subpackage, not the top layer
                out += [(node.lineno, f"motionssl.{a.name}" if f"motionssl.{a.name}" in RANK else "motionssl")
                        for a in node.names]
            else:
                out.append((node.lineno, target))
    return out


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    here = layer_of(module)
    bad = []
    for line, target in imported_modules(source, module, is_package=is_package):
        there = layer_of(target)
        if there == here:
            continue
        if RANK[there] > RANK[here]:
            bad.append(f"{module}:{line} imports {target} from a layer above ({there} over {here})")
        elif RANK[there] == RANK[here]:
            bad.append(f"{module}:{line} imports {target} from a sibling layer ({there} beside {here})")
    return bad


def modules() -> list[tuple[Path, str]]:
    found = []
    for folder, (package, _) in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            found.append((path, ".".join((package, *rel))))
    return found


def test_every_layer_is_scanned():
    names = {m for _, m in modules()}
    assert {"motionssl.cli", "motionssl.stores", "motionssl.train.loop", "motionssl.eval.motion",
            "motionssl.pictures.frames", "motionssl.preprocess.extract", "motionssl.train.methods.cmd"} <= names
    assert len(names) > 60


def test_imports_only_go_down():
    bad = []
    for path, module in modules():
        bad += violations(path.read_text(), module, is_package=path.name == "__init__.py")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module, source", [
    ("motionssl.stores.layout", "from motionssl.train.loop import train"),              # up
    ("motionssl.stores.layout", "def f():\n    from motionssl.eval import motion\n"),   # up, inside a function
    ("motionssl.stores", "from motionssl import __version__"),                         # the CLI layer's package
    ("motionssl.preprocess.extract", "import motionssl.train.checkpoint"),               # sibling
    ("motionssl.train.faults", "from motionssl.preprocess.isolation import DecoderFailed"),  # sibling
    ("motionssl.train.methods.cmd", "from ...eval.motion import x"),                    # up, relative
    ("motionssl.pictures.curves", "from motionssl.train.run_log import read_log"),      # up
])
def test_a_planted_violation_is_caught(module, source):
    assert violations(source, module), f"{source!r} in {module} passed the layer check"


@pytest.mark.parametrize("module, source", [
    ("motionssl.eval.motion", "from motionssl.train.loop import to_device"),
    ("motionssl.train.loop", "from motionssl.stores import open_store\nfrom . import checkpoint"),
    ("motionssl.cli", "from motionssl.eval.evaluate import Protocol"),
    ("motionssl.pictures.frames", "from motionssl.stores import Store"),
])
def test_downward_imports_pass(module, source):
    assert violations(source, module) == []


def test_the_top_package_holds_only_the_command_line():
    assert sorted(p.name for p in (ROOT / "motionssl").iterdir() if p.name != "__pycache__") == [
        "__init__.py", "__main__.py", "cli.py"]


def test_python_dash_m_motionssl_runs_the_cli_and_prints_the_version():
    import subprocess
    import sys
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "motionssl", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"motionssl {version('motionssl')}"
    helped = subprocess.run([sys.executable, "-m", "motionssl", "info", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "Usage: motionssl info" in helped.stdout
