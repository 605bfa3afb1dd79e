"""The layers stay apart (docs/architecture.md): import-linter's contracts in pyproject.toml
hold the tooling above the gateway and the scaler, both above the shared contracts, the gateway
and the scaler apart, and no import circle among the modules of any package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def test_every_import_keeps_the_layers_and_no_circle() -> None:
    run = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
         "lint_imports_command()", "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 kept, 0 broken" in run.stdout, run.stdout


def test_the_contracts_layer_names_every_shared_module() -> None:
    """A new module in wakegate/ must join the bottom layer, or the layers contract would not
    see its imports; the tooling is wakegate/tools/."""
    (layers,) = [c for c in _contracts() if c["id"] == "layers"]
    bottom = str(layers["layers"][-1]).split(" : ")  # type: ignore[index]
    shared = sorted(
        f"wakegate.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "wakegate").iterdir()
        if (p.suffix == ".py" and not p.name.startswith("__"))
        or (p.is_dir() and (p / "__init__.py").exists() and p.name != "tools")
    )
    assert sorted(bottom) == shared
