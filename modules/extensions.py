"""Extensions: folders under ``extensions-builtin/`` (tracked in git) and ``<data dir>/extensions/`` (installed by
the user), each with optional ``scripts/``, ``install.py``, ``preload.py``, ``javascript/``, ``style.css`` and
``metadata.ini`` (A1111 ``modules.extensions``).

Which extensions are active comes from the settings ``disabled_extensions`` / ``disable_all_extensions`` and the
``--disable-extensions`` (safe mode) and ``--disable-extra-extensions`` flags.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from modules import errors, paths

extensions: list["Extension"] = []


@dataclass
class Extension:
    name: str
    path: str
    is_builtin: bool = False
    enabled: bool = True
    load_time: float = 0.0  # seconds spent importing its scripts
    errors: list[str] = field(default_factory=list)  # what went wrong while installing or loading it
    _git: dict | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.metadata = configparser.ConfigParser(interpolation=None)
        metadata_file = os.path.join(self.path, "metadata.ini")
        if os.path.isfile(metadata_file):
            try:
                self.metadata.read(metadata_file, encoding="utf8")
            except configparser.Error as e:
                self.errors.append(f"metadata.ini: {e}")
        self.canonical_name = (self.metadata.get("Extension", "Name", fallback="") or self.name).strip().lower()

    @property
    def requires(self) -> list[str]:
        """Canonical names of the extensions this one needs (``[Extension] Requires``)."""
        return split_names(self.metadata.get("Extension", "Requires", fallback=""))

    def script_requirements(self, key: str, relative_path: str) -> list[str]:
        """``Requires``/``Before``/``After`` of one script file (``[scripts/foo.py]`` section)."""
        return split_names(self.metadata.get(relative_path, key, fallback=""))

    def list_files(self, subdir: str, extension: str) -> list[str]:
        folder = os.path.join(self.path, subdir)
        if not os.path.isdir(folder):
            return []
        return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
                if name.endswith(extension) and os.path.isfile(os.path.join(folder, name))]

    def _git_info(self) -> dict:
        """Remote URL, commit and branch, read once (empty for folders that are not git checkouts)."""
        if self._git is None:
            self._git = {"remote": "", "commit": "", "branch": ""}
            if os.path.exists(os.path.join(self.path, ".git")):
                self._git = {"remote": _git(self.path, "config", "--get", "remote.origin.url"),
                             "commit": _git(self.path, "rev-parse", "HEAD"),
                             "branch": _git(self.path, "rev-parse", "--abbrev-ref", "HEAD")}
        return self._git

    def refresh_git_info(self) -> None:
        self._git = None

    @property
    def remote(self) -> str:
        return self._git_info()["remote"]

    @property
    def commit(self) -> str:
        return self._git_info()["commit"]

    @property
    def branch(self) -> str:
        return self._git_info()["branch"]

    @property
    def source(self) -> str:
        """Where it came from, for the Extensions tab: its git remote, "built-in", or "local folder"."""
        return self.remote or ("built-in" if self.is_builtin else "local folder")


def split_names(text: str) -> list[str]:
    return [name.strip().lower() for name in text.split(",") if name.strip()]


def _git(folder: str, *args: str) -> str:
    try:
        result = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def extension_roots() -> list[tuple[str, bool]]:
    """(folder, is_builtin), built-in first."""
    return [(paths.extensions_builtin_dir, True), (paths.extensions_dir, False)]


def list_extensions() -> list[Extension]:
    """Scan both extension folders and decide which extensions are enabled; fills ``extensions``."""
    from modules import shared

    disabled = set(shared.opts.disabled_extensions or [])
    mode = _disable_mode()
    found: list[Extension] = []
    for root, builtin in extension_roots():
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            if name.startswith(".") or not os.path.isdir(folder):
                continue
            enabled = name not in disabled and mode != "all" and not (mode == "extra" and not builtin)
            found.append(Extension(name=name, path=folder, is_builtin=builtin, enabled=enabled))
    names = {e.canonical_name for e in found if e.enabled}
    for extension in found:
        missing = [r for r in extension.requires if r not in names]
        if extension.enabled and missing:
            extension.enabled = False
            extension.errors.append(f"disabled: it requires {', '.join(missing)}, which is not installed or not enabled")
            errors.report(f"Extension {extension.name}: {extension.errors[-1]}")
    extensions[:] = found
    return found


def _disable_mode() -> str:
    """none | extra | all: the command-line flags win over the ``disable_all_extensions`` setting."""
    from modules import shared

    flags = shared.cmd_opts
    if getattr(flags, "disable_extensions", False):
        return "all"
    if getattr(flags, "disable_extra_extensions", False):
        return "extra"
    return shared.opts.disable_all_extensions or "none"


def active() -> list[Extension]:
    return [e for e in extensions if e.enabled]


def find(name: str) -> Extension | None:
    return next((e for e in extensions if e.name == name), None)


def set_enabled(name: str, enabled: bool) -> None:
    """Enable or disable an extension by folder name and persist it in ``disabled_extensions`` (takes effect at the
    next start or scripts reload)."""
    from modules import shared
    from modules.errors import UserInputError

    if find(name) is None:
        raise UserInputError(f"extension {name!r} is not installed")
    disabled = [n for n in (shared.opts.disabled_extensions or []) if n != name]
    if not enabled:
        disabled.append(name)
    shared.opts.set("disabled_extensions", disabled)
    shared.opts.save(shared.config_filename())
    for extension in extensions:
        if extension.name == name:
            extension.enabled = enabled


INSTALL_TIMEOUT = 1800
URL_PATTERN = re.compile(r"^(https?://|ssh://|git://|file://|git@[\w.\-]+:)[^\s]+$")


def require_local_server() -> None:
    """Installing and updating run code from the internet: only on a loopback, non-shared server."""
    from modules import shared

    if shared.cmd_opts.webui_is_non_local:
        raise PermissionError("installing or updating extensions is only possible when the server is bound to "
                              "127.0.0.1 and not shared (no --listen, --share or --server-name)")


def run_install_script(extension: Extension) -> bool:
    """Run the extension's ``install.py`` in a subprocess under the extension constraints. False (and the reason in
    ``extension.errors``) when it fails or when a protected package changed anyway."""
    from modules import launch_utils

    script = os.path.join(extension.path, "install.py")
    if not os.path.isfile(script):
        return True
    before = launch_utils.installed_versions(launch_utils.PROTECTED)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [launch_utils.ROOT, env.get("PYTHONPATH")]))
    env["PIP_CONSTRAINT"] = launch_utils.extension_constraints_file()
    try:
        result = subprocess.run([sys.executable, script], cwd=extension.path, env=env, capture_output=True, text=True,
                                timeout=INSTALL_TIMEOUT)
        failure = None if result.returncode == 0 else (result.stderr.strip() or result.stdout.strip())[-2000:]
    except subprocess.TimeoutExpired:
        failure = f"did not finish within {INSTALL_TIMEOUT} s"
    after = launch_utils.installed_versions(before)
    problems = []
    changed = [f"{name} {old} -> {after[name]}" for name, old in before.items() if after[name] != old]
    if changed:
        problems.append(f"install.py changed protected packages ({', '.join(changed)}); run `python launch.py --reinstall`")
    if failure:
        problems.append(f"install.py failed: {failure}")
    for message in problems:
        extension.errors.append(message)
        errors.report(f"Extension {extension.name}: {message}")
    return not problems


def run_install_scripts() -> None:
    for extension in active():
        run_install_script(extension)


def run_preload(parser) -> None:
    """Let every active extension's ``preload.py`` add command-line flags (``preload(parser)``)."""
    import importlib.util

    for extension in active():
        path = os.path.join(extension.path, "preload.py")
        if not os.path.isfile(path):
            continue
        try:
            spec = importlib.util.spec_from_file_location(f"preload_{extension.canonical_name}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.preload(parser)
        except Exception as e:
            extension.errors.append(f"preload.py failed: {type(e).__name__}: {e}")
            errors.report(f"Extension {extension.name}: {extension.errors[-1]}")


def install_from_url(url: str, name: str | None = None) -> Extension:
    """Clone ``url`` into the user extension folder, run its install.py and return it (loopback servers only)."""
    from modules.errors import UserInputError

    require_local_server()
    url = (url or "").strip()
    if not URL_PATTERN.match(url) and not os.path.isabs(url):
        raise UserInputError(f"extension URL {url!r} is not a git URL (https://, ssh://, git@host:path or a local path)")
    name = (name or "").strip() or os.path.basename(url.rstrip("/")).removesuffix(".git")
    if not re.fullmatch(r"[\w.\-]+", name) or name.startswith("."):
        raise UserInputError(f"extension folder name {name!r} may only contain letters, digits, '.', '_' and '-'")
    target = paths.contained(paths.extensions_dir, name)
    if target.exists():
        raise UserInputError(f"an extension named {name!r} is already installed")
    os.makedirs(paths.extensions_dir, exist_ok=True)
    temporary = paths.contained(paths.extensions_dir, f".{name}.installing")
    shutil.rmtree(temporary, ignore_errors=True)
    result = subprocess.run(["git", "clone", "--depth", "1", "--", url, str(temporary)], capture_output=True, text=True,
                            timeout=INSTALL_TIMEOUT)
    if result.returncode != 0:
        shutil.rmtree(temporary, ignore_errors=True)
        raise UserInputError(f"git clone {url} failed: {result.stderr.strip()[-500:]}")
    os.replace(temporary, target)
    list_extensions()
    extension = find(name)
    run_install_script(extension)
    return extension


def update(name: str) -> str:
    """Fast-forward an installed extension to its remote's latest commit; returns the new commit."""
    from modules.errors import UserInputError

    require_local_server()
    extension = find(name)
    if extension is None or extension.is_builtin:
        raise UserInputError(f"extension {name!r} is not a user-installed extension")
    if not extension.remote:
        raise UserInputError(f"extension {name!r} is not a git checkout, so it cannot be updated")
    result = subprocess.run(["git", "-C", extension.path, "pull", "--ff-only"], capture_output=True, text=True,
                            timeout=INSTALL_TIMEOUT)
    if result.returncode != 0:
        raise UserInputError(f"updating {name} failed: {result.stderr.strip()[-500:]}")
    extension.refresh_git_info()
    run_install_script(extension)
    return extension.commit
