"""Helpers extension ``install.py`` files call (A1111 ``launch`` / ``modules.launch_utils``): ``is_installed``,
``run_pip``, ``run``, ``git_clone``.

Every pip call runs under the extension constraints (constraints.txt plus the pinned versions of the protected
packages), so an extension can add packages but never change torch, diffusers, transformers or gradio: pip
refuses, and the error names the conflict.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
python = sys.executable
PROTECTED = ("torch", "diffusers", "transformers", "gradio", "accelerate", "safetensors", "huggingface_hub")
_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)")


class InstallError(RuntimeError):
    """A command of an install step failed; the message has its output."""


def is_installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pinned_requirements(path: str) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a requirements file."""
    with open(path, encoding="utf8") as f:
        return dict(match.groups() for match in map(_PIN.match, f) if match)


def protected_pins() -> dict[str, str]:
    """name -> pinned version of the protected packages, from requirements.txt."""
    pins = pinned_requirements(os.path.join(ROOT, "requirements.txt"))
    return {name: version for name, version in pins.items() if name.lower().replace("-", "_") in PROTECTED}


def extension_constraints_file() -> str:
    """A constraints file: constraints.txt plus ``name==version`` for every protected package."""
    with open(os.path.join(ROOT, "constraints.txt"), encoding="utf8") as f:
        text = f.read()
    text += "\n" + "".join(f"{name}=={version}\n" for name, version in protected_pins().items())
    path = os.path.join(tempfile.gettempdir(), f"webui-extension-constraints-{os.getpid()}.txt")
    with open(path, "w", encoding="utf8") as f:
        f.write(text)
    return path


def installed_versions(names) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run(command: str | list[str], desc: str | None = None, errdesc: str | None = None, custom_env: dict | None = None,
        live: bool = False) -> str:
    if desc:
        print(desc, flush=True)
    args = shlex.split(command) if isinstance(command, str) else command
    result = subprocess.run(args, capture_output=not live, text=True, env=custom_env or os.environ.copy())
    if result.returncode != 0:
        output = "" if live else f"\nstdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
        raise InstallError(f"{errdesc or 'Error running command'}.\nCommand: {command}\nError code: {result.returncode}{output}")
    return "" if live else result.stdout


def run_pip(command: str, desc: str | None = None, live: bool = False) -> str:
    """``pip <command>`` with the extension constraints applied."""
    constraints = os.environ.get("PIP_CONSTRAINT") or extension_constraints_file()  # set for install.py already
    args = [python, "-m", "pip", *shlex.split(command), "--prefer-binary", "-c", constraints]
    return run(args, desc=f"Installing {desc}" if desc else None, errdesc=f"Couldn't install {desc or command}", live=live)


def git_clone(url: str, directory: str, name: str, commithash: str | None = None) -> None:
    if os.path.exists(directory):
        return
    run(["git", "clone", "--", url, directory], f"Cloning {name} into {directory}...", f"Couldn't clone {name}")
    if commithash:
        run(["git", "-C", directory, "checkout", commithash], None, f"Couldn't checkout {name}'s hash: {commithash}")


def __getattr__(name: str):
    if name == "args":  # launch.args: the parsed command-line flags
        from modules import shared

        return shared.cmd_opts
    raise AttributeError(name)
