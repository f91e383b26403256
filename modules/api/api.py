"""The ``/sdapi/v1`` routes, with A1111's paths, fields and response shapes.

Every generation goes through the job queue the UI uses (one job at a time on the device, clients take
turns). A client that goes away does not lose its job: it finishes, is saved when ``save_images`` is on, and
its response stays available under ``GET /sdapi/v1/jobs/{id}`` (the id is ``force_task_id`` when the request
set it, and the ``X-Task-Id`` header of the response otherwise).

Stricter than A1111: unknown samplers, schedulers, upscalers, scripts and settings, bad images and
out-of-range numbers are 4xx answers naming the field, never a silent fallback or a stack trace.
"""
from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from typing import Any, Callable

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from modules import (errors, extensions, images, infotext_utils, postprocessing, processing, script_callbacks, scripts,
                     sd_models, sd_samplers, sd_schedulers, sd_vae, shared, upscaler)
from modules.api import controlnet, encoding, models
from modules.engine import previews
from modules.errors import UserInputError
from modules.runtime import job_queue, settings_change
from modules.shared import opts, state

log = logging.getLogger("webui")
PREFIX = "/sdapi/v1"
SECRET_FLAG_WORDS = ("auth", "password", "token", "secret", "key")  # cmd-flags values never shown
POLL_SECONDS = 0.05
TASK_ID = re.compile(r"[\x20-\x7e]{1,200}")


def error_response(status: int, error: str, detail: Any, body: Any = "") -> JSONResponse:
    """A1111's error body: ``{error, detail, body, errors}``."""
    return JSONResponse({"error": error, "detail": detail, "body": body, "errors": str(detail)}, status_code=status)


class ApiRoute(APIRoute):
    """Turns every failure of a route into A1111's JSON error body: 422 for bad input (pydantic or ours), the
    status of an ``HTTPException``, 503 for a full queue, 500 without a traceback for anything else. Adds
    ``X-Process-Time`` and, with ``--api-log``, logs the request."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except RequestValidationError as e:
                problems = [f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body')}: {err.get('msg')}"
                            for err in e.errors()]
                response = error_response(422, "RequestValidationError", "; ".join(problems) or "invalid request")
            except HTTPException as e:
                response = error_response(e.status_code, type(e).__name__, e.detail)
            except UserInputError as e:
                response = error_response(422, type(e).__name__, str(e))
            except job_queue.QueueFull as e:
                response = error_response(503, type(e).__name__, str(e))
            except Exception as e:  # noqa: BLE001 - the server answers and keeps running
                status = getattr(e, "status_code", 500)  # exceptions that know their HTTP status
                if status >= 500 and not hasattr(e, "status_code"):
                    errors.report(f"API error: {request.method} {request.url.path}", exc_info=True)
                response = error_response(status, type(e).__name__, str(e))
            elapsed = time.perf_counter() - started
            response.headers["X-Process-Time"] = f"{elapsed:.4f}"
            if getattr(shared.cmd_opts, "api_log", False):
                log.info("API %s %s -> %s in %.3fs", request.method, request.url.path, response.status_code, elapsed)
            return response

        return route_handler


def client_of(request: Request) -> str:
    """Whose job this is, for fair turns and for ``/jobs``: the logged-in user, else the caller's address."""
    user = request.scope.get("state", {}).get("user")
    return f"user:{user}" if user else f"api:{request.client.host if request.client else 'unknown'}"


async def wait_for(job: job_queue.Job) -> None:
    while not job.done_event.is_set():
        await asyncio.sleep(POLL_SECONDS)


def submit(func: Callable[[], Any], description: str, request: Request, job_id: str | None = None,
           meta: dict | None = None) -> job_queue.Job:
    if job_id is not None and not TASK_ID.fullmatch(job_id):  # it goes back in the X-Task-Id header
        raise UserInputError(f"force_task_id: 1 to 200 printable ASCII characters, got {job_id!r:.60}")
    try:
        return job_queue.queue.submit(func, description, job_id=job_id, client=client_of(request), meta=meta)
    except job_queue.DuplicateJobId as e:
        raise HTTPException(409, str(e)) from None


def job_outcome(job: job_queue.Job) -> Any:
    """The job's result; its failure as the matching HTTP error (422 for bad input found while running)."""
    if job.status == job_queue.DONE:
        return job.result
    if job.status == job_queue.CANCELLED:
        raise HTTPException(409, f"job {job.id} was cancelled before it started")
    if job.error_is_user_input:
        raise UserInputError(job.error)
    if job.error_out_of_memory:
        raise HTTPException(503, job.error)
    if job.error_status:  # an error that names its status (weights missing: 503)
        raise HTTPException(job.error_status, job.error)
    raise HTTPException(500, f"job {job.id} failed: {job.error}")


async def run_job(func: Callable[[], Any], description: str, request: Request) -> Any:
    job = submit(func, description, request)
    await wait_for(job)
    return job_outcome(job)


# --- building processing objects from requests ------------------------------------------------------------


def _fields_from_infotext(params: dict, text: str, is_img2img: bool, model: type) -> tuple[dict, dict]:
    """(request fields, settings overrides) a parsed infotext carries."""
    script_callbacks.infotext_pasted_callback(text, params)
    found = (infotext_utils.img2img_fields_from_infotext if is_img2img else infotext_utils.txt2img_fields_from_infotext)(params)
    overrides = infotext_utils.override_settings_from_infotext(params)
    if "face_restoration_model" in found:
        overrides.setdefault("face_restoration_model", found["face_restoration_model"])
    return {k: v for k, v in found.items() if k in model.model_fields}, overrides


def build_processing(request: models.ApiModel, is_img2img: bool, user: str | None = None):
    """(p, script runner, script args) for a txt2img/img2img request, all input checked."""
    model = type(request)
    fields = request.model_dump()
    overrides: dict[str, Any] = {}
    params = infotext_utils.parse_generation_parameters(request.infotext) if request.infotext else None
    if params is not None:
        found, overrides = _fields_from_infotext(params, request.infotext, is_img2img, model)
        given = {k for k in request.model_fields_set if fields.get(k) is not None}  # null counts as not given
        fields.update({k: v for k, v in found.items() if k not in given})
    overrides.update(fields.get("override_settings") or {})
    settings_change.check(overrides, "override_settings")
    fields["override_settings"] = overrides
    fields["sampler_name"] = fields.get("sampler_name") or request.sampler_index
    if fields.get("firstpass_image"):
        raise UserInputError("firstpass_image: starting the hires pass from a given image is not supported")
    if is_img2img:
        if not fields.get("init_images"):
            raise UserInputError("init_images: at least one input image is required")
        fields["init_images"] = [encoding.decode_image(text, f"init_images[{i}]") for i, text in enumerate(fields["init_images"])]
        for name in ("mask", "latent_mask"):
            if fields.get(name):
                fields[name] = encoding.decode_image(fields[name], name)
                size, expected = fields[name].size, fields["init_images"][0].size
                if size != expected:
                    raise UserInputError(f"{name}: {size[0]}x{size[1]} does not match the first init image's "
                                         f"{expected[0]}x{expected[1]}")
    cls = processing.StableDiffusionProcessingImg2Img if is_img2img else processing.StableDiffusionProcessingTxt2Img
    p = cls(**{name: fields[name] for name in models.processing_fields(model)})
    p.is_api = True
    p.user = user
    if not request.save_images:
        p.do_not_save_samples = p.do_not_save_grid = True
    p.validate()
    runner = scripts.runner_for(is_img2img)
    args = runner.build_args(request.script_name, request.script_args, request.alwayson_scripts, params)
    return p, runner, args


def echo_parameters(request: models.ApiModel) -> dict:
    echo = request.model_dump()
    if isinstance(request, models.StableDiffusionImg2ImgProcessingAPI) and not request.include_init_images:
        echo["init_images"] = echo["mask"] = None
    return echo


def image_response(processed: processing.Processed, meta: dict) -> dict:
    pictures = [encoding.encode_image(image) for image in processed.images] if meta.get("send_images", True) else []
    return {"images": pictures, "parameters": meta.get("parameters", {}), "info": processed.js()}


# --- the routes -------------------------------------------------------------------------------------------


class Api:
    """The routes, in ``self.router``; registered on ``app`` when one is given (a bare FastAPI app with
    ``--nowebui``). The Gradio app gets ``self.router.routes`` when it is created, so they answer from the
    first request on."""

    def __init__(self, app: FastAPI | None = None) -> None:
        self.router = APIRouter(prefix=PREFIX, route_class=ApiRoute, tags=["sdapi"])
        post, get = self._post, self._get
        post("/txt2img", self.text2imgapi, response_model=models.ImageResponse)
        post("/img2img", self.img2imgapi, response_model=models.ImageResponse)
        post("/extra-single-image", self.extras_single_image_api, response_model=models.ExtrasSingleImageResponse)
        post("/extra-batch-images", self.extras_batch_images_api, response_model=models.ExtrasBatchImagesResponse)
        post("/png-info", self.pnginfoapi, response_model=models.PNGInfoResponse)
        post("/interrogate", self.interrogateapi)
        get("/progress", self.progressapi, response_model=models.ProgressResponse)
        post("/interrupt", self.interruptapi)
        post("/skip", self.skip)
        get("/jobs", self.list_jobs)
        get("/jobs/{job_id}", self.get_job)
        get("/options", self.get_config)
        post("/options", self.set_config)
        get("/cmd-flags", self.get_cmd_flags)
        get("/samplers", self.get_samplers)
        get("/schedulers", self.get_schedulers)
        get("/upscalers", self.get_upscalers)
        get("/latent-upscale-modes", self.get_latent_upscale_modes)
        get("/sd-models", self.get_sd_models)
        get("/sd-vae", self.get_sd_vaes)
        get("/hypernetworks", self.get_hypernetworks)
        get("/face-restorers", self.get_face_restorers)
        get("/realesrgan-models", self.get_realesrgan_models)
        get("/prompt-styles", self.get_prompt_styles)
        get("/embeddings", self.get_embeddings)
        get("/loras", self.get_loras)
        get("/scripts", self.get_scripts_list)
        get("/script-info", self.get_script_info)
        get("/extensions", self.get_extensions_list)
        get("/memory", self.get_memory)
        get("/history", self.get_history)  # ours: not an A1111 route
        post("/refresh-checkpoints", self.refresh_checkpoints)
        post("/refresh-embeddings", self.refresh_embeddings)
        post("/refresh-vae", self.refresh_vae)
        post("/refresh-loras", self.refresh_loras)
        post("/unload-checkpoint", self.unloadapi)
        post("/reload-checkpoint", self.reloadapi)
        self.router.routes.extend(controlnet.build_router(ApiRoute).routes)  # the ControlNet extension's /controlnet
        if app is not None:
            app.include_router(self.router)

    def _post(self, path: str, endpoint: Callable, **kwargs) -> None:
        self.router.add_api_route(path, endpoint, methods=["POST"], **kwargs)

    def _get(self, path: str, endpoint: Callable, **kwargs) -> None:
        self.router.add_api_route(path, endpoint, methods=["GET"], **kwargs)

    # generation

    async def text2imgapi(self, txt2imgreq: models.StableDiffusionTxt2ImgProcessingAPI, request: Request) -> Response:
        return await self._generate(txt2imgreq, request, is_img2img=False)

    async def img2imgapi(self, img2imgreq: models.StableDiffusionImg2ImgProcessingAPI, request: Request) -> Response:
        return await self._generate(img2imgreq, request, is_img2img=True)

    async def _generate(self, body: models.ApiModel, request: Request, is_img2img: bool) -> Response:
        user = request.scope.get("state", {}).get("user")
        p, runner, args = await run_in_threadpool(build_processing, body, is_img2img, user)

        def work() -> processing.Processed:
            runner.attach(p, args)
            return processing.process_with_scripts(p)

        meta = {"kind": "img2img" if is_img2img else "txt2img", "send_images": body.send_images,
                "parameters": echo_parameters(body)}
        job = submit(work, meta["kind"], request, job_id=body.force_task_id, meta=meta)
        await wait_for(job)
        processed = job_outcome(job)
        content = await run_in_threadpool(image_response, processed, meta)
        return JSONResponse(content, headers={"X-Task-Id": job.id})

    async def extras_single_image_api(self, req: models.ExtrasSingleImageRequest, request: Request) -> dict:
        image = encoding.decode_image(req.image, "image")
        params = models.extras_params(req)
        params.validate()
        results, text = await run_job(lambda: postprocessing.run([(image, None)], params, save_results=False),
                                      "extras", request)
        return {"html_info": text, "image": encoding.encode_image(results[0]) if results else None}

    async def extras_batch_images_api(self, req: models.ExtrasBatchImagesRequest, request: Request) -> dict:
        sources = [(encoding.decode_image(item.data, f"imageList[{i}].data"), item.name or None)
                   for i, item in enumerate(req.imageList)]
        if not sources:
            raise UserInputError("imageList: no images given")
        params = models.extras_params(req)
        params.validate()
        results, text = await run_job(lambda: postprocessing.run(sources, params, save_results=False),
                                      "extras", request)
        return {"html_info": text, "images": [encoding.encode_image(image) for image in results]}

    def pnginfoapi(self, req: models.PNGInfoRequest) -> dict:
        if not req.image.strip():
            return {"info": "", "items": {}, "parameters": {}}
        image = encoding.decode_image(req.image, "image")
        geninfo, items = images.read_info_from_image(image)
        geninfo = geninfo or ""
        params = infotext_utils.parse_generation_parameters(geninfo) if geninfo else {}
        if geninfo:
            script_callbacks.infotext_pasted_callback(geninfo, params)
        items = {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in items.items() if k != "exif"}
        return {"info": geninfo, "items": items, "parameters": params}

    async def interrogateapi(self, req: models.InterrogateRequest, request: Request) -> dict:
        from modules import interrogate

        image = encoding.decode_image(req.image, "image")
        interrogator = interrogate.find(req.model)
        caption = await run_job(lambda: interrogator.interrogate(image.convert("RGB")), "interrogate", request)
        return {"caption": caption}

    # progress and control

    def progressapi(self, skip_current_image: bool = False) -> dict:
        current = job_queue.queue.current
        pending = len(job_queue.queue.pending())
        job_state = job_queue.queue.state_of(current) if current is not None else state.primary
        if current is None or job_state.job_count == 0:
            return {"progress": 0.0, "eta_relative": 0.0, "state": job_state.dict(), "current_image": None,
                    "textinfo": job_state.textinfo, "queued": pending}
        progress = job_queue.queue.progress(current)
        image = None
        hide = skip_current_image or opts.content_filter  # no unfiltered preview while the filter is on
        preview = None if hide else previews.current_preview(
            job_state, sd_models.current_model(job_queue.queue.slot_of(current)), opts.show_progress_type)
        if preview is not None:
            image = encoding.encode_image(preview, "png")
        return {"progress": max(progress["progress"], 0.01), "eta_relative": progress["eta"] or 0.0,
                "state": job_state.dict(), "current_image": image, "textinfo": job_state.textinfo, "queued": pending,
                "id_task": current.id}

    def interruptapi(self) -> dict:
        job_queue.queue.interrupt()
        return {}

    def skip(self) -> None:
        job_queue.queue.skip()

    def _job_summary(self, job: job_queue.Job) -> dict:
        return {"id": job.id, "description": job.description, "status": job.status, "created": job.created,
                "started": job.started, "finished": job.finished, "queue_position": job_queue.queue.position(job),
                "error": job.error}

    def list_jobs(self, request: Request) -> list[dict]:
        client = client_of(request)
        return [self._job_summary(job) for job in job_queue.queue.jobs() if job.client == client]

    def get_job(self, job_id: str, request: Request) -> dict:
        """A job's status, and the response it gave (or would have given) once it is done."""
        job = job_queue.queue.get(job_id)
        if job is None or job.client != client_of(request):
            raise HTTPException(404, f"no job {job_id!r} (finished jobs are kept for the last "
                                     f"{job_queue.KEEP_FINISHED})")
        summary = self._job_summary(job)
        summary["progress"] = job_queue.queue.progress(job)
        if job.status == job_queue.DONE and isinstance(job.result, processing.Processed):
            summary["result"] = image_response(job.result, job.meta)
        return summary

    # settings and flags

    def get_config(self) -> dict:
        return {key: opts.data.get(key, info.default) for key, info in opts.data_labels.items()
                if not callable(opts.data.get(key, info.default))}

    async def set_config(self, req: dict[str, Any], request: Request) -> None:
        info = settings_change.apply(req, "options")
        if info is not None:
            await run_job(lambda: sd_vae.reload_vae_weights(sd_models.reload_model_weights(info=info)),
                          f"load {info.name}", request)
        try:
            settings_change.save()
        except OSError as e:  # a full disk: the settings apply now but are not kept; the old file stays whole
            raise HTTPException(507, f"settings applied but not saved to {shared.config_filename()}: "
                                     f"{e.strerror or e}") from None

    def get_cmd_flags(self) -> dict:
        flags = {}
        for key, value in vars(shared.cmd_opts).items():
            secret = any(word in key for word in SECRET_FLAG_WORDS) and value not in (None, False, "", [])
            flags[key] = "<redacted>" if secret else value
        return flags

    # lists

    def get_samplers(self) -> list[dict]:
        return [{"name": s.name, "aliases": list(s.aliases), "options": {k: str(v) for k, v in s.options.items()}}
                for s in sd_samplers.samplers]

    def get_schedulers(self) -> list[dict]:
        return [{"name": s.name, "label": s.label, "aliases": list(s.aliases) or None, "default_rho": -1,
                 "need_inner_model": False} for s in sd_schedulers.schedulers if not s.unsupported]

    def get_upscalers(self) -> list[dict]:
        return [{"name": u.name, "model_name": getattr(u.scaler, "model_name", None) or u.name,
                 "model_path": u.data_path, "model_url": None, "scale": u.scale} for u in upscaler.all_upscalers()]

    def get_latent_upscale_modes(self) -> list[dict]:
        return [{"name": name} for name in shared.latent_upscale_modes]

    def get_sd_models(self) -> list[dict]:
        return [{"title": info.title, "model_name": info.model_name, "hash": info.shorthash, "sha256": info.sha256,
                 "filename": info.filename, "config": info.config,
                 "family": info.family.label if info.family is not None else None}  # ours: not in A1111's answer
                for info in sd_models.checkpoints_list.values()]

    def get_sd_vaes(self) -> list[dict]:
        return [{"model_name": name, "filename": path} for name, path in sd_vae.vae_dict.items()]

    def get_history(self, query: str = "", page: int = 1, per_page: int = 36, refresh: bool = False) -> dict:
        """Saved images, newest first, found by the History's search text (``modules/history/index.py``)."""
        from modules.history import index

        history = index.history()
        if refresh:
            history.reconcile()
        total, entries = history.search(query, page, per_page)
        return {"total": total, "page": max(1, page), "per_page": max(1, min(per_page, 500)),
                "items": [entry.as_dict() for entry in entries]}

    def get_hypernetworks(self) -> list[dict]:
        from modules.networks import hypernetwork

        return [{"name": name, "path": path} for name, path in hypernetwork.list_hypernetworks().items()]

    def get_face_restorers(self) -> list[dict]:
        from modules import face_restoration

        return [{"name": r.name(), "cmd_dir": getattr(r, "model_path", None)} for r in face_restoration.face_restorers()]

    def get_realesrgan_models(self) -> list[dict]:
        return [{"name": u.name, "path": u.data_path, "scale": u.scale} for u in upscaler.all_upscalers()
                if "realesrgan" in (u.data_path or "").lower().replace("-", "")]

    def get_prompt_styles(self) -> list[dict]:
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in shared.prompt_styles.styles.values()]

    def get_embeddings(self) -> dict:
        from modules.textual_inversion import textual_inversion

        textual_inversion.refresh_for_model(sd_models.current_model())
        db = textual_inversion.embedding_db
        loaded = {name: {"step": e.step, "sd_checkpoint": e.sd_checkpoint, "sd_checkpoint_name": e.sd_checkpoint_name,
                         "shape": e.shape, "vectors": e.vectors} for name, e in db.embeddings.items()}
        return {"loaded": loaded, "skipped": {path: {"error": message} for path, message in db.errors.items()}}

    def get_loras(self) -> list[dict]:
        from modules.networks import lora

        return [{"name": n.name, "alias": n.alias, "path": n.filename, "metadata": n.metadata}
                for n in lora.list_available_networks().values()]

    def get_scripts_list(self) -> dict:
        return {tab: [s.title().lower() for s in scripts.runner_for(tab == "img2img").scripts]
                for tab in ("txt2img", "img2img")}

    def get_script_info(self) -> list[dict]:
        result = []
        for is_img2img in (False, True):
            runner = scripts.runner_for(is_img2img)
            runner.ensure_args()
            for script in runner.scripts:
                result.append({"name": script.title().lower(), "is_alwayson": bool(script.alwayson),
                               "is_img2img": is_img2img, "args": [_control_info(c) for c in script.controls]})
        return result

    def get_extensions_list(self) -> list[dict]:
        return [{"name": e.name, "remote": e.remote, "branch": e.branch, "commit_hash": e.commit, "commit_date": None,
                 "version": e.commit[:8], "enabled": e.enabled} for e in extensions.extensions]

    def get_memory(self) -> dict:
        import psutil

        ram = psutil.virtual_memory()
        result: dict[str, Any] = {"ram": {"free": ram.available, "used": ram.total - ram.available, "total": ram.total}}
        torch = sys.modules.get("torch")  # only when a model has loaded it; never imported here
        if torch is not None and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            stats = torch.cuda.memory_stats()
            result["cuda"] = {"system": {"free": free, "used": total - free, "total": total},
                              "active": {"current": stats.get("active_bytes.all.current", 0),
                                         "peak": stats.get("active_bytes.all.peak", 0)},
                              "allocated": {"current": stats.get("allocated_bytes.all.current", 0),
                                            "peak": stats.get("allocated_bytes.all.peak", 0)},
                              "reserved": {"current": stats.get("reserved_bytes.all.current", 0),
                                           "peak": stats.get("reserved_bytes.all.peak", 0)}}
        else:
            result["cuda"] = {"error": "unavailable"}
        return result

    # maintenance (in the queue, so nothing is rescanned or unloaded under a running job)

    async def refresh_checkpoints(self, request: Request) -> None:
        await run_job(sd_models.list_models, "refresh checkpoints", request)

    async def refresh_embeddings(self, request: Request) -> None:
        from modules.textual_inversion import textual_inversion

        await run_job(lambda: textual_inversion.refresh_for_model(force_reload=True), "refresh embeddings", request)

    async def refresh_vae(self, request: Request) -> None:
        await run_job(sd_vae.refresh_vae_list, "refresh VAE list", request)

    async def refresh_loras(self, request: Request) -> None:
        from modules.networks import lora

        await run_job(lambda: lora.list_available_networks(force=True), "refresh LoRA list", request)

    async def unloadapi(self, request: Request) -> dict:
        await run_job(sd_models.unload_model_weights, "unload checkpoint", request)
        return {}

    async def reloadapi(self, request: Request) -> dict:
        await run_job(lambda: sd_vae.reload_vae_weights(sd_models.reload_model_weights()), "reload checkpoint", request)
        return {}


def _control_info(control: Any) -> dict:
    value = getattr(control, "value", None)
    choices = getattr(control, "choices", None)
    if choices is not None:
        choices = [c[0] if isinstance(c, (list, tuple)) else c for c in choices]
    return {"label": getattr(control, "label", None), "value": value if not callable(value) else None,
            "minimum": getattr(control, "minimum", None), "maximum": getattr(control, "maximum", None),
            "step": getattr(control, "step", None), "choices": choices}
