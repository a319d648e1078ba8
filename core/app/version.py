"""The version of this code, as `--version` and the build_info metric say it."""
from __future__ import annotations

from pathlib import Path


def version() -> str:
    """The version of this code: pyproject.toml's when it runs from a checkout (the installed
    metadata may be another checkout's), else the installed package's."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == "defender-forwarder" and "version" in project:
            return str(project["version"])
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("defender-forwarder")
    except PackageNotFoundError:
        return "unknown (neither installed nor run from a checkout)"
