"""Every package in the source tree is listed in pyproject.toml, so a wheel install is complete."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_all_packages_are_listed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "vlalign_jax").rglob("__init__.py")}
    found |= {"vlalign_jax.converters"} if (ROOT / "converters" / "__init__.py").exists() else set()
    assert set(setuptools["packages"]) == found
    assert setuptools["package-dir"]["vlalign_jax.converters"] == "converters"
