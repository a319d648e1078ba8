"""`defender-forwarder splunk-app build`: the Splunk add-on `TA-defender-forwarder` as a .tgz.

The package is the skeleton in `core/app/splunk_ta/` (conf files, dashboard, metadata) plus
what is generated from code, so that it cannot drift from it:

- `default/app.conf`: the version of this package;
- `README/inputs.conf.spec`: the modular input's arguments (`splunk_input.ARGUMENTS`);
- `bin/lib/`: this package (`core`, `connectors`, `mappings`) and its pure-Python
  dependencies, copied from the environment the command runs in (the versions tested here);
- `bin/lib/3rdparty/cp<XY>_<machine>/`: the compiled dependencies (pydantic-core, msgspec,
  orjson, cryptography, cffi, charset-normalizer) for each target Python and machine. The
  modular input puts the directory of the Python splunkd runs it with on its path, as
  Splunk's own Microsoft Security add-on does; none there means an unsupported Splunk, said
  in one line in splunkd.log (docs/splunk-addon.md lists the supported ones).

A target that is the running interpreter is copied from the environment too (offline); any
other is installed by pip for that Python and platform, from the index or `--wheels DIR`,
pinned to the versions installed here.
"""
from __future__ import annotations

import importlib.metadata as metadata
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from core.app.splunk_input import APP_NAME, ARGUMENTS, SCHEME
from core.app.version import version as package_version

# What the modular input imports, each with its dependencies (found through the installed
# metadata). Not aiohttp (the daemon's HTTP endpoint), argcomplete (shell completion) nor rich
# (the CLI's tables; httpx imports it only for its own command line, when it is there).
ROOTS = ("httpx", "msal", "pydantic", "orjson", "msgspec", "aiolimiter", "prometheus-client",
         "cryptography", "splunk-sdk")
OUR_PACKAGES = ("core", "connectors", "mappings")
# The Pythons and machines splunkd runs add-ons with that the package carries by default:
# Splunk Enterprise 10.x and Splunk Cloud (python.required = 3.13), Linux on both architectures.
DEFAULT_TARGETS = ("3.13-x86_64", "3.13-aarch64")
SKELETON = "splunk_ta"
# Vendored code Splunk Cloud prohibits and the add-on never runs, replaced in the copy (the
# library on this machine is left alone): (file in bin/lib, first line, last line, replacement).
# AppInspect's cloud checks fail a package on any UDP socket (check_for_python_udp_network_communications);
# prometheus_client's one is the Pushgateway helper `instance_ip_grouping_key`, which finds the
# host's address with a UDP socket; the add-on pushes no metrics. A library version whose text
# differs stops the build, so that the patch is looked at again rather than silently skipped.
PATCHES: tuple[tuple[str, str, str, str], ...] = (
    ("prometheus_client/exposition.py",
     "    with closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:",
     "        return {'instance': s.getsockname()[0]}",
     "    # TA-defender-forwarder: removed (a UDP socket; Splunk Cloud prohibits UDP, the add-on pushes no metrics).\n"
     "    raise NotImplementedError('instance_ip_grouping_key is not available in TA-defender-forwarder')"),
)
_LEFT_OUT = re.compile(r"(^|/)(__pycache__|\.[^/]*)(/|$)|\.py[co]$")


class BuildFailed(Exception):
    """What stopped the build, in one line with the fix."""


@dataclass(frozen=True)
class Target:
    python: str  # "3.13"
    machine: str  # "x86_64" | "aarch64"

    @classmethod
    def parse(cls, text: str) -> "Target":
        if text == "current":
            return current_target()
        found = re.fullmatch(r"(3\.\d+)-(x86_64|aarch64)", text)
        if found is None:
            raise BuildFailed(f"--target {text}: expected PYTHON-MACHINE such as 3.13-x86_64 or 3.13-aarch64, "
                              "or current")
        return cls(found.group(1), found.group(2))

    @property
    def tag(self) -> str:
        return f"cp{self.python.replace('.', '')}_{self.machine}"

    def is_current(self) -> bool:
        return self == current_target()


def current_target() -> Target:
    return Target(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine().lower())


# ---- the distributions ------------------------------------------------------------------------
def closure(roots: tuple[str, ...] = ROOTS) -> list[metadata.Distribution]:
    """The installed distributions the roots need, each once (requirements of an extra left out)."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = _normal(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise BuildFailed(f"{name} is not installed here; the add-on vendors it: "
                              "pip install 'defender-forwarder[splunk]'") from None
        found[name] = dist
        for requirement in dist.requires or []:
            requirement_name, _, marker = requirement.partition(";")
            if "extra" in marker:
                continue
            dependency = re.match(r"[A-Za-z0-9._-]+", requirement_name.strip())
            if dependency and _installed(dependency.group()):
                todo.append(dependency.group())
    return [found[name] for name in sorted(found)]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def is_compiled(dist: metadata.Distribution) -> bool:
    return any(str(path).endswith((".so", ".pyd", ".dylib")) for path in dist.files or [])


# ---- the package ------------------------------------------------------------------------------
def build(output: Path, targets: list[Target], wheels: Path | None = None) -> Path:
    """Write TA-defender-forwarder-<version>.tgz into `output`; returns its path."""
    version = package_version()
    with tempfile.TemporaryDirectory(prefix="ta-") as scratch:
        root = Path(scratch) / APP_NAME
        _copy_skeleton(root)
        (root / "default" / "app.conf").write_text(app_conf(version), encoding="utf-8")
        (root / "README").mkdir(exist_ok=True)
        (root / "README" / "inputs.conf.spec").write_text(inputs_conf_spec(), encoding="utf-8")
        lib = root / "bin" / "lib"
        dists = closure()
        compiled = [dist for dist in dists if is_compiled(dist)]
        for target in targets:  # first: the step that can fail (pip, wheels), before seconds of copying
            _vendor_compiled(compiled, target, lib / "3rdparty" / target.tag, wheels)
        for package in OUR_PACKAGES:
            _copy_tree(_package_dir(package), lib / package)
        for dist in dists:
            if not is_compiled(dist):
                _copy_dist(dist, lib)
        _patch(lib)
        output.mkdir(parents=True, exist_ok=True)
        package = output / f"{APP_NAME}-{version}.tgz"
        _tar(root, package)
    return package


def _copy_skeleton(root: Path) -> None:
    skeleton = files("core.app") / SKELETON
    _copy_tree(Path(str(skeleton)), root)


def _package_dir(package: str) -> Path:
    module = __import__(package)
    return Path(module.__file__ or "").parent


def _copy_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if not path.is_file() or _LEFT_OUT.search(relative) or relative.startswith(f"app/{SKELETON}/"):
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def _copy_dist(dist: metadata.Distribution, lib: Path) -> None:
    for file in dist.files or []:
        relative = str(file)
        if relative.startswith("..") or _LEFT_OUT.search(relative) or relative.endswith(".pth"):
            continue  # console scripts, compiled caches, editable-install hooks
        source = Path(str(dist.locate_file(file)))
        if source.is_file():
            destination = lib / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)


def _vendor_compiled(dists: list[metadata.Distribution], target: Target, directory: Path,
                     wheels: Path | None) -> None:
    if target.is_current():
        for dist in dists:
            _copy_dist(dist, directory)
        return
    pins = [f"{dist.metadata['Name']}=={dist.version}" for dist in dists]
    # abi3 wheels (cryptography's) and pure ones serve every CPython: pip takes them for abi3/none.
    abis = [f"cp{target.python.replace('.', '')}", "abi3", "none"]
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps", "--target",
               str(directory), "--only-binary=:all:", "--implementation", "cp", "--python-version", target.python,
               *(option for abi in abis for option in ("--abi", abi)),
               "--platform", f"manylinux2014_{target.machine}", "--platform", f"manylinux_2_17_{target.machine}",
               *(["--no-index", "--find-links", str(wheels)] if wheels is not None else []), *pins]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        where = f"in {wheels}" if wheels is not None else "from the package index"
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise BuildFailed(f"--target {target.python}-{target.machine}: the compiled dependencies are not available "
                          f"{where} ({last}); pass --wheels DIR with their wheels (pip download --only-binary=:all: "
                          f"--python-version {target.python} --platform manylinux2014_{target.machine} "
                          f"{' '.join(pins)}), or build for --target current")
    for path in list(directory.rglob("*")):
        if path.is_dir() and (path.name == "__pycache__" or path.name == "bin"):
            shutil.rmtree(path, ignore_errors=True)


def _patch(lib: Path) -> None:
    for relative, first, last, replacement in PATCHES:
        path = lib / relative
        text = path.read_text(encoding="utf-8")
        start = text.find(first)
        end = text.find(last, start)
        if start < 0 or end < 0:
            raise BuildFailed(f"bin/lib/{relative}: the code splunk_app.PATCHES replaces is not there in the version "
                              "installed here; review the patch for this version")
        path.write_text(text[:start] + replacement + text[end + len(last):], encoding="utf-8")


def _tar(root: Path, package: Path) -> None:
    """A .tgz whose members are `TA-defender-forwarder/...` (no `./`), with modes AppInspect wants:
    only bin/ scripts executable."""
    with tarfile.open(package, "w:gz") as archive:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root.parent).as_posix()
            info = archive.gettarinfo(str(path), arcname=relative)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.mode = 0o755
                archive.addfile(info)
            else:
                top_script = path.parent == root / "bin" and path.suffix == ".py"
                info.mode = 0o755 if top_script else 0o644
                with open(path, "rb") as handle:
                    archive.addfile(info, handle)


# ---- generated conf files ---------------------------------------------------------------------
def app_conf(version: str) -> str:
    return f"""# Generated by `defender-forwarder splunk-app build` {version}.
[install]
is_configured = false
build = 1

[package]
id = {APP_NAME}
check_for_updates = false

[ui]
is_visible = true
label = Defender Forwarder

[launcher]
author = defender-forwarder
description = Microsoft Defender alerts and incidents of many customer tenants, CIM-compliant.
version = {version}

[id]
name = {APP_NAME}
version = {version}
"""


def inputs_conf_spec() -> str:
    lines = [f"[{SCHEME}://<name>]",
             "* One input per set of customer tenants read through one MSSP app.", ""]
    for argument in ARGUMENTS:
        lines.append(f"{argument.name} = <string>")
        lines.append(f"* {argument.description}")
        lines.append(f"* {'Required.' if argument.required else 'Optional.'}"
                     + (f" Default: {argument.default}" if argument.default else ""))
        lines.append("")
    return "\n".join(lines)
