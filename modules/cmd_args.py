"""Command-line flags (a subset of A1111's, same names and meanings)."""
from __future__ import annotations

import argparse


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description="Stable Diffusion web UI on diffusers")
    add = parser.add_argument
    # serving
    add("--port", type=int, default=None, help="port to serve on (default 7860, or the next free one)")
    add("--listen", action="store_true", help="bind 0.0.0.0 instead of 127.0.0.1 (requires authentication)")
    add("--server-name", type=str, default=None, help="host name or address to bind")
    add("--share", action="store_true", help="create a public gradio.live link (requires authentication)")
    add("--gradio-auth", type=str, default=None, help='credentials "user:pass[,user2:pass2]"')
    add("--gradio-auth-path", type=str, default=None, help="file with credentials, one user:pass per line or comma-separated")
    add("--api", action="store_true",
        help="serve the HTTP API (/sdapi/v1) on a --listen/--share/--server-name server too (always on for 127.0.0.1)")
    add("--api-auth", type=str, default=None,
        help='credentials "user:pass[,user2:pass2]"; they, like --gradio-auth, open every route (page and API)')
    add("--api-log", action="store_true", help="log every API request")
    add("--nowebui", action="store_true", help="serve the API only, without the web page")
    add("--cors-allow-origins", type=str, default=None, help="comma-separated origins allowed to call the server from a browser")
    add("--cors-allow-origins-regex", type=str, default=None, help="regular expression of origins allowed, as above")
    add("--allowed-hosts", type=str, default=None,
        help="comma-separated host names the server answers besides its loopback names and --server-name "
             "(behind a reverse proxy or a tunnel; '*' answers any Host header)")
    add("--max-queued-jobs", type=int, default=64, help="jobs that may wait in the queue; more are refused (HTTP 503)")
    add("--autolaunch", action="store_true", help="open the UI in the system's browser")
    # install
    add("--skip-install", action="store_true", help="do not check or install Python packages")
    add("--skip-prepare-environment", action="store_true", help="same as --skip-install")
    add("--exit", action="store_true", help="install requirements, then exit")
    add("--reinstall", action="store_true", help="reinstall the pinned requirements even when they look satisfied")
    # paths
    add("--data-dir", type=str, default=None, help="where config, models and outputs live (default: the install dir)")
    add("--models-dir", type=str, default=None, help="models root (default: <data-dir>/models)")
    add("--ckpt", type=str, default=None, help="checkpoint to load at start (added to the list)")
    add("--ckpt-dir", type=str, default=None, help="extra directory scanned for checkpoints")
    add("--vae-dir", type=str, default=None, help="extra directory scanned for VAE files")
    add("--vae-path", type=str, default=None, help="VAE file to use always (the SD VAE setting is then ignored)")
    add("--embeddings-dir", type=str, default=None, help="extra directory scanned for textual-inversion embeddings")
    add("--lora-dir", type=str, default=None, help="extra directory scanned for LoRA networks")
    add("--hypernetwork-dir", type=str, default=None, help="extra directory scanned for hypernetworks (.pt)")
    add("--controlnet-dir", type=str, default=None, help="extra directory scanned for ControlNet models")
    for family in ("esrgan", "realesrgan", "codeformer", "gfpgan"):
        add(f"--{family}-models-path", type=str, default=None, help=f"folder of {family} weights (default: models/<family>)")
    add("--img2img-batch-root", type=str, action="append", default=None,
        help="extra folder img2img batch may read from and write to (repeatable; the data dir is always allowed)")
    add("--styles-file", type=str, action="append", default=None,
        help="styles CSV file (repeatable, glob patterns allowed; default: <data-dir>/styles.csv)")
    # device
    add("--device", choices=["cpu", "cuda", "mps"], default=None, help="torch device (default: best available)")
    add("--precision", choices=["full", "half", "autocast"], default="autocast",
        help="full = float32 everywhere; half/autocast = float16 on GPUs (CPU always uses float32)")
    add("--device-id", type=int, default=None, help="which CUDA device to use (0, 1, ...), as A1111's --device-id")
    add("--gpus", type=str, default=None,
        help="one job-queue worker per listed CUDA device ('0,1' or 'all'): jobs run at once, one per GPU, each "
             "loading its model on its own GPU")
    add("--no-half", action="store_true", help="same as --precision full")
    add("--medvram", action="store_true", help="keep the model in RAM; text encoders, UNet and VAE go to the GPU one at a time")
    add("--medvram-sdxl", action="store_true", help="--medvram for SDXL models only")
    add("--lowvram", action="store_true", help="as --medvram, and the UNet moves to the GPU block by block")
    add("--fast-path", choices=["off", "graphs", "compile"], default=None,
        help="UNet fast path on CUDA (default: the unet_fast_path setting, graphs): CUDA graphs of the eager UNet; "
             "compile adds torch.compile for the unet_compile_sizes setting")
    add("--no-half-vae", action="store_true", help="keep the VAE in float32 (SDXL's VAE gives NaNs in float16)")
    # behaviour
    add("--demo", action="store_true", help="use a tiny random-weight demo checkpoint when no real one is present")
    add("--skip-load-model-at-start", action="store_true", help="load the checkpoint on first use instead of at start")
    add("--no-prompt-history", action="store_true", help="do not write params.txt")
    add("--no-hashing", action="store_true", help="do not compute checkpoint sha256 (titles and infotext lack the hash)")
    add("--filenames-max-length", type=int, default=128, help="cap on each file name part")
    add("--disable-extensions", "--disable-all-extensions", dest="disable_extensions", action="store_true",
        help="safe mode: start with no extension at all, built-in ones included")
    add("--disable-extra-extensions", action="store_true", help="start with only the built-in extensions")
    add("--unix-filenames-sanitization", action="store_true", help="only replace / in file names")
    return parser


def parse(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None,
          known_only: bool = False) -> argparse.Namespace:
    """Parse flags; unknown flags are an error (argparse prints which one and exits with status 2) unless
    ``known_only`` (the early parse that finds the data dir before extensions add their flags)."""
    parser = parser or make_parser()
    opts = parser.parse_known_args(argv)[0] if known_only else parser.parse_args(argv)
    if opts.no_half:
        opts.precision = "full"
    if opts.skip_prepare_environment:
        opts.skip_install = True
    opts.webui_is_non_local = bool(opts.share or opts.listen or opts.server_name)
    return opts
