"""Start-up: read flags and settings, find checkpoints, build the page and serve it.

Heavy libraries (torch, diffusers) are not imported here; the model loads in the job queue after the
server is up, so the page answers within seconds.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading

from modules import cmd_args, devices, extensions, initialize, paths, script_callbacks, scripts, sd_models, sd_vae, shared
from modules.loading import model_download
from modules.runtime import job_queue
from modules.loading.demo_model import ensure_demo_checkpoint

log = logging.getLogger("webui")
DEFAULT_PORT = 7860
API_TITLE = "Stable Diffusion web UI API"
# Gradio's launch() calls this itself, without credentials; it only runs the page's start-up events once
GRADIO_OPEN_PATHS = frozenset({"/gradio_api/startup-events"})


def parse_credentials(opts) -> list[tuple[str, str]]:
    """Every account of --gradio-auth, --gradio-auth-path and --api-auth: one login for the page and the API."""
    entries: list[str] = []
    for flag in (opts.gradio_auth, getattr(opts, "api_auth", None)):
        if flag:
            entries += flag.split(",")
    if opts.gradio_auth_path:
        with open(opts.gradio_auth_path, encoding="utf8") as f:
            for line in f:
                entries += line.strip().split(",")
    credentials = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        if ":" not in entry:
            raise SystemExit(f"--gradio-auth/--api-auth: {entry!r} is not of the form user:password")
        user, password = entry.split(":", 1)
        credentials.append((user, password))
    return credentials


def free_port(host: str, start: int) -> int:
    """``start`` if it is free, else the next free port above it."""
    for port in range(start, start + 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host if host != "0.0.0.0" else "", port))
                return port
            except OSError:
                continue
    raise SystemExit(f"no free port between {start} and {start + 99}")


def prepare_models(opts) -> None:
    """Scan checkpoints; with none present, create the demo model when asked to or when the hub is unreachable."""
    sd_models.list_models()
    if not sd_models.checkpoints_list and (opts.demo or model_download.hub_offline()):
        ensure_demo_checkpoint(paths.models_path)
        sd_models.list_models()
        log.warning("No checkpoint found: using the random-weight demo model %s", sd_models.checkpoint_tiles())
    sd_vae.refresh_vae_list()


def parse_flags(argv: list[str] | None) -> object:
    """Find the data dir and its settings from a first parse, let the active extensions' preload.py add their
    flags, then parse for real (so an unknown flag is still an error)."""
    parser = cmd_args.make_parser()
    initialize.initialize(cmd_args.parse(argv, parser, known_only=True))
    extensions.list_extensions()
    extensions.run_preload(parser)
    return cmd_args.parse(argv, parser)


def load_extensions(opts) -> None:
    """Run the active extensions' install.py (unless --skip-install), import their scripts and let them add settings."""
    if not opts.skip_install:
        extensions.list_extensions()
        extensions.run_install_scripts()
    scripts.load_scripts()
    script_callbacks.ui_settings_callback()
    for extension in extensions.extensions:
        state = "enabled" if extension.enabled else "disabled"
        problems = f" ({'; '.join(extension.errors)})" if extension.errors else ""
        log.info("Extension %s: %s, scripts loaded in %.2fs%s", extension.name, state, extension.load_time, problems)


def host_policy(opts, host: str):
    """Which Host headers and browser origins this server answers (see modules/api/cross_site.py)."""
    from modules.api.cross_site import HostPolicy

    return HostPolicy.from_flags(host, opts.server_name, opts.allowed_hosts, opts.cors_allow_origins,
                                 opts.cors_allow_origins_regex)


def app_middleware(opts, credentials: list[tuple[str, str]], policy) -> list:
    """Middleware of the whole app, outermost first: the Host check (DNS rebinding), CORS for the origins the flags
    allow, the refusal of other sites' requests, then the one login every route needs."""
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    from modules.api.auth import BasicAuthMiddleware
    from modules.api.cross_site import CrossSiteMiddleware, HostCheckMiddleware

    middleware = [Middleware(HostCheckMiddleware, policy=policy)]
    if opts.cors_allow_origins or opts.cors_allow_origins_regex:
        origins = [o.strip() for o in (opts.cors_allow_origins or "").split(",") if o.strip()]
        middleware.append(Middleware(CORSMiddleware, allow_origins=origins, allow_origin_regex=opts.cors_allow_origins_regex,
                                     allow_methods=["*"], allow_headers=["*"], allow_credentials=True))
    middleware.append(Middleware(CrossSiteMiddleware, policy=policy))
    if credentials:
        middleware.append(Middleware(BasicAuthMiddleware, credentials=dict(credentials), open_paths=GRADIO_OPEN_PATHS))
    return middleware


def api_enabled(opts) -> bool:
    """On by default on a loopback bind; a server reachable from other machines needs --api (or --nowebui)."""
    return not opts.webui_is_non_local or opts.api or opts.nowebui


def serve_api_only(opts, host: str, port: int, credentials: list[tuple[str, str]], policy):
    """--nowebui: the API and the routes extensions add, on uvicorn without the page; returns the server."""
    import time

    import uvicorn
    from fastapi import FastAPI

    from modules.api.api import Api

    app = FastAPI(title=API_TITLE, docs_url="/docs", redoc_url="/redoc",
                  middleware=app_middleware(opts, credentials, policy))
    Api(app)
    script_callbacks.app_started_callback(None, app)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit(f"the API server could not start on {host}:{port}")
        time.sleep(0.05)
    return server


def gpu_workers(opts) -> list[str]:
    """The queue workers' devices for ``--gpus`` (this imports torch: only when the flag is given)."""
    if opts.device_id is not None or opts.device not in (None, "cuda"):
        raise SystemExit("--gpus chooses the CUDA devices itself; leave out --device-id and --device")
    try:
        names = devices.gpu_worker_devices(opts.gpus)
    except RuntimeError as e:
        raise SystemExit(str(e)) from None
    print(f"Job queue: one worker per GPU ({', '.join(names)})", flush=True)
    return names


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    opts = parse_flags(argv)
    initialize.initialize(opts)
    devices.request(opts.device, opts.precision, opts.device_id)
    for folder in ("Stable-diffusion", "VAE", "Lora", "embeddings"):
        os.makedirs(os.path.join(paths.models_path, folder), exist_ok=True)
    prepare_models(opts)

    credentials = parse_credentials(opts)
    if opts.webui_is_non_local and not credentials:
        password = secrets.token_urlsafe(12)
        credentials = [("webui", password)]
        print(f"This server is reachable from other machines (--listen/--share/--server-name), so it needs a login.\n"
              f"No --gradio-auth was given; generated one for this run: user 'webui', password '{password}'", flush=True)

    if opts.nowebui and opts.share:
        raise SystemExit("--share links to the web page; it cannot be combined with --nowebui")
    job_queue.queue.max_pending = max(1, opts.max_queued_jobs)
    if opts.gpus:
        job_queue.queue.set_workers(gpu_workers(opts))
    if not opts.nowebui:
        from webui import gradio_compat

        gradio_compat.install()  # before extensions are imported: some use Gradio 3 names at import
    load_extensions(opts)
    host = opts.server_name or ("0.0.0.0" if opts.listen else "127.0.0.1")
    port = free_port(host, opts.port or DEFAULT_PORT)
    demo = api_server = None
    policy = host_policy(opts, host)
    if opts.nowebui:
        api_server = serve_api_only(opts, host, port, credentials, policy)
    else:
        demo = launch_webui(opts, host, port, credentials, policy)
    local_url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    print(f"Running on local URL: {local_url}", flush=True)
    if api_enabled(opts):
        print(f"API: {local_url}/sdapi/v1 (docs at {local_url}/docs)", flush=True)
    threading.Thread(target=reconcile_history, name="history-index", daemon=True).start()
    if sd_models.checkpoints_list and not opts.skip_load_model_at_start:
        job_queue.queue.submit(sd_models.reload_model_weights, "load model")
    try:
        while True:
            command = shared.state.wait_for_server_command(timeout=3600)
            if command == "stop":
                break
            if command == "restart" and demo is not None:  # Reload UI (Settings tab)
                demo = reload_webui(demo, opts, host, port, credentials, policy)
    except KeyboardInterrupt:
        pass
    if demo is not None:
        demo.close()
    if api_server is not None:
        api_server.should_exit = True


def reconcile_history() -> None:
    """At start, off the main thread: the History index notices files added or removed while the server was off."""
    from modules.history import index

    try:
        added, removed = index.history().reconcile()
        if added or removed:
            log.info("History index: %d image(s) added, %d removed", added, removed)
    except Exception as e:  # noqa: BLE001 - the History is a convenience; the server starts anyway
        log.warning("History index could not be built: %s: %s", type(e).__name__, e)


def reload_webui(demo, opts, host: str, port: int, credentials: list[tuple[str, str]], policy):
    """Rebuild the page on the same port, the extensions' scripts imported again (A1111's Reload UI); jobs in the
    queue go on meanwhile."""
    log.info("Reloading the UI")
    demo.close()
    scripts.reload_scripts()
    script_callbacks.ui_settings_callback()
    return launch_webui(opts, host, port, credentials, policy)


def launch_webui(opts, host: str, port: int, credentials: list[tuple[str, str]], policy):
    """Build the page, serve it (with the API routes when enabled) and return the Blocks."""
    from webui import extension_assets
    from webui.ui import create_ui

    script_callbacks.before_ui_callback()
    demo = create_ui()
    shared.demo = demo
    output_dir = os.path.join(paths.data_path, "outputs")
    os.makedirs(output_dir, exist_ok=True)
    demo.queue(default_concurrency_limit=None)
    app_kwargs = {"middleware": app_middleware(opts, credentials, policy)}
    if api_enabled(opts):
        from modules.api.api import Api

        # the API routes are part of the app from its creation: no request can arrive before them
        app_kwargs.update(docs_url="/docs", redoc_url="/redoc", title=API_TITLE, routes=list(Api().router.routes))
    app, _, share_url = demo.launch(
        server_name=host, server_port=port, share=opts.share, prevent_thread_lock=True, inbrowser=opts.autolaunch,
        allowed_paths=[output_dir], quiet=True, footer_links=["api", "settings"], head=extension_assets.head_html(),
        css=extension_assets.css(), app_kwargs=app_kwargs,
    )
    if share_url:
        policy.add_public_url(share_url)  # the tunnel's host: the one foreign Host this server then answers
    script_callbacks.app_started_callback(demo, app)
    if share_url:
        print(f"Running on public URL: {share_url}", flush=True)
    return demo


if __name__ == "__main__":
    main(sys.argv[1:])
