"""Shell completion: the code `completion bash` prints, loaded into a real bash, completes
commands and options from the CLI's own parser."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli

BASH = shutil.which("bash")


def _complete(tmp_path: Path, *words: str) -> list[str]:
    """What bash offers after `defender-forwarder WORDS` (the last word is the one completed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "defender-forwarder"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m core.app.cli "$@"\n')
    wrapper.chmod(0o755)
    line = " ".join(("defender-forwarder", *words))
    script = "\n".join([
        'eval "$(defender-forwarder completion bash)"',
        f"COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}",
        "COMP_WORDS=(defender-forwarder " + " ".join(f"'{w}'" for w in words) + f"); COMP_CWORD={len(words)}",
        f"_python_argcomplete defender-forwarder '{words[-1]}' '{([*('defender-forwarder',), *words])[-2]}'",
        'printf "%s\\n" "${COMPREPLY[@]}"',
    ])
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    result = subprocess.run([BASH, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [word.strip() for word in result.stdout.splitlines() if word.strip()]


@pytest.mark.skipif(BASH is None, reason="no bash on this machine")
def test_bash_completes_commands_and_their_options(tmp_path: Path) -> None:
    assert _complete(tmp_path, "ba") == ["backfill"]
    assert set(_complete(tmp_path, "dead-letters", "")) >= {"list", "show", "replay", "drop", "--sink", "--all"}
    assert _complete(tmp_path, "run", "--out") == ["--output"]


def test_completion_code_is_printed_for_each_shell() -> None:
    for shell in ("bash", "zsh", "fish"):
        result = run_cli("completion", shell)
        assert result.returncode == 0, result.stderr
        assert "defender-forwarder" in result.stdout and "_ARGCOMPLETE" in result.stdout
    wrong = run_cli("completion", "tcsh")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr
