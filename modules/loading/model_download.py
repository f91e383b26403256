"""First-start model provisioning: download a family's official checkpoint (SD 1.5 or SDXL base) through
huggingface_hub, or fall back to the demo model."""
from __future__ import annotations

import os
from typing import Callable

from modules import paths
from modules.families import sd1, sdxl
from modules.families.spec import OfficialCheckpoint
from modules.loading import demo_model

OFFERS: tuple[OfficialCheckpoint, ...] = (sd1.SD1.official_checkpoint, sdxl.SDXL.official_checkpoint)
OFFICIAL = OFFERS[0]  # the default: the smallest download, which every feature supports


def find_offer(label: str) -> OfficialCheckpoint:
    for offer in OFFERS:
        if offer.label == label:
            return offer
    raise ValueError(f"no official checkpoint called {label!r} (offered: {', '.join(o.label for o in OFFERS)})")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _progress_class(report: Callable[[int, int], None]):
    from tqdm.auto import tqdm

    class Reporting(tqdm):
        def update(self, n=1):
            result = super().update(n)
            report(int(self.n), int(self.total or 0))
            return result

    return Reporting


def download_official(report: Callable[[int, int], None] | None = None, offer: OfficialCheckpoint = OFFICIAL) -> str:
    """Download an official checkpoint into models/Stable-diffusion; raises if the hub cannot be reached."""
    from huggingface_hub import hf_hub_download

    if hub_offline():
        raise ConnectionError("HF_HUB_OFFLINE is set")
    target = os.path.join(paths.models_path, "Stable-diffusion")
    os.makedirs(target, exist_ok=True)
    kwargs = {"tqdm_class": _progress_class(report)} if report else {}
    return hf_hub_download(offer.repo, offer.filename, local_dir=target, etag_timeout=10, **kwargs)


def provide_checkpoint(report: Callable[[int, int], None] | None = None,
                       offer: OfficialCheckpoint = OFFICIAL) -> tuple[str, str]:
    """Try the official download; when that is impossible create the demo model. Returns (path, message)."""
    try:
        return download_official(report, offer), f"Downloaded {offer.filename}."
    except Exception as e:  # offline, hub unreachable, disk full...
        path = demo_model.ensure_demo_checkpoint(paths.models_path)
        return path, (f"Could not download {offer.label} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                      f"created the random-weight demo model instead.")


def main(argv: list[str] | None = None) -> None:
    """``python -m modules.loading.model_download "SD 1.5"`` (or ``"SDXL base"``): download that official checkpoint
    into ``models/Stable-diffusion`` of the data dir (the install dir unless ``--data-dir``), with a progress bar."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m modules.loading.model_download",
                                     description="Download an official checkpoint into models/Stable-diffusion")
    parser.add_argument("checkpoint", choices=[offer.label for offer in OFFERS])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    paths.configure(args.data_dir)
    try:
        print(f"Saved {download_official(offer=find_offer(args.checkpoint))}")
    except Exception as e:  # offline, hub unreachable, disk full
        raise SystemExit(f"Could not download {args.checkpoint}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None


if __name__ == "__main__":
    main()
