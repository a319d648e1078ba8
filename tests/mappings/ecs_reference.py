"""ECS 8.11's field definitions (field -> type), for the checks that every field the ecs format
writes is an ECS field of the right type.

Source: Elastic's own npm package `@elastic/ecs` 8.11.5, whose `build/commonjs/ecs_flat.js`
is the `generated/ecs/ecs_flat.yml` of elastic/ecs v8.11.0 as a JavaScript object (its 1,659
fields; ECS 8.16's additions such as `volume.*` and `threat.indicator.id` are not in it).
Nothing of it is copied into this repository: `.ci/ecs-reference` fetches the package with
npm into a cache outside it ($DF_ECS_REFERENCE, else ~/.cache/defender-forwarder/ecs-8.11.5),
and node reads the object. Where either is absent, the calling test skips, saying why.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

PACKAGE = "@elastic/ecs"
VERSION = "8.11.5"  # the package release; its definitions are ECS 8.11.0's
ECS_VERSION = "8.11.0"

# Print field -> {type, normalize} as JSON (process.argv[1]: the package directory).
_DUMP = ("const d = process.argv[1]; const v = require(d + '/package.json').version;"
         "const f = require(d + '/build/commonjs/ecs_flat.js').EcsFlat; const out = {};"
         "for (const [k, x] of Object.entries(f)) out[k] = {type: x.type, normalize: x.normalize || []};"
         "process.stdout.write(JSON.stringify({version: v, fields: out}));")


def package_dir() -> Path:
    base = os.environ.get("DF_ECS_REFERENCE")
    if base:
        return Path(base) / "package"
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "defender-forwarder" / f"ecs-{VERSION}" / "package"


@cache
def _load() -> tuple[dict[str, dict[str, Any]] | None, str]:
    directory = package_dir()
    if not (directory / "build" / "commonjs" / "ecs_flat.js").is_file():
        return None, (f"ECS {ECS_VERSION}'s field definitions ({PACKAGE}@{VERSION}) are not at {directory}: "
                      "run .ci/ecs-reference (it fetches them with npm)")
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        return None, f"node is not installed; it reads the field definitions of {PACKAGE}@{VERSION}"
    done = subprocess.run([node, "-e", _DUMP, str(directory)], capture_output=True, timeout=60, check=True)
    loaded = json.loads(done.stdout)
    assert loaded["version"] == VERSION, f"{directory} holds {PACKAGE}@{loaded['version']}, not {VERSION}"
    return loaded["fields"], ""


def ecs_fields() -> dict[str, dict[str, Any]]:
    """ECS 8.11's fields: flat name -> {"type": ..., "normalize": [...]}."""
    fields, why = _load()
    if fields is None:
        pytest.skip(why)
    return fields
