#!/usr/bin/env python3
"""Start the web UI: create or reuse a virtual environment, install the pinned requirements when they are
not already satisfied (a quick version check otherwise), then serve the UI.

    python launch.py [flags]             start the UI on http://127.0.0.1:7860
    python launch.py --run-tests [args]  install test requirements too and run the test suite (pytest args follow)
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
# git_clone, is_installed, run and run_pip are what extension install.py files call as launch.*
from modules.launch_utils import git_clone, is_installed, pinned_requirements, run, run_pip  # noqa: E402,F401

VENV_DIR = os.environ.get("venv_dir") or os.path.join(ROOT, "venv")
CONSTRAINTS = os.path.join(ROOT, "constraints.txt")
REQUIREMENTS = os.path.join(ROOT, "requirements.txt")
TEST_REQUIREMENTS = os.path.join(ROOT, "requirements-test.txt")


def venv_python() -> str:
    return os.path.join(VENV_DIR, "Scripts" if os.name == "nt" else "bin", "python")


def ensure_venv(argv: list[str]) -> None:
    """Use the active virtual environment, else create ./venv and re-run this script inside it."""
    if sys.prefix != sys.base_prefix or "--skip-install" in argv:
        return
    if not os.path.exists(venv_python()):
        print(f"Creating virtual environment in {VENV_DIR}", flush=True)
        venv.create(VENV_DIR, with_pip=True)
    os.execv(venv_python(), [venv_python(), os.path.abspath(__file__), *argv])


def unsatisfied(files: list[str]) -> list[str]:
    """Pinned requirements whose installed version differs (or that are missing)."""
    from importlib.metadata import PackageNotFoundError, version

    missing = []
    for path in files:
        for name, wanted in pinned_requirements(path).items():
            try:
                installed = version(name).split("+")[0]
            except PackageNotFoundError:
                installed = None
            if installed != wanted:
                missing.append(f"{name}=={wanted}")
    return missing


def install(files: list[str], force: bool = False) -> None:
    missing = unsatisfied(files)
    if not missing and not force:
        return
    print(f"Installing: {', '.join(missing) or 'all requirements'}", flush=True)
    command = [sys.executable, "-m", "pip", "install", "-c", CONSTRAINTS]
    for path in files:
        command += ["-r", path]
    subprocess.check_call(command)
    try:
        from importlib.metadata import version

        print(f"warning: torchvision {version('torchvision')} is installed; it can break transformers", flush=True)
    except Exception:
        pass


def main(argv: list[str]) -> int:
    run_tests = "--run-tests" in argv
    pytest_args = argv[argv.index("--run-tests") + 1:] if run_tests else []
    launch_args = argv[: argv.index("--run-tests")] if run_tests else argv
    ensure_venv(argv)
    started = time.time()
    if "--skip-install" not in launch_args:
        install([REQUIREMENTS, TEST_REQUIREMENTS] if run_tests else [REQUIREMENTS], force="--reinstall" in launch_args)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if run_tests:
        return subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT)
    if "--exit" in launch_args:
        print(f"Requirements ready ({time.time() - started:.1f}s).")
        return 0
    from webui.server import main as serve

    serve(launch_args)
    return 0


def __getattr__(name: str):
    if name == "args":  # launch.args, read by extension install.py files
        from modules import launch_utils

        return launch_utils.args
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
