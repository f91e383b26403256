"""The A1111 ControlNet extension's routes (``/controlnet/...``), which the Krita and Photoshop plugins and
``webuiapi`` call: version, model and module lists, settings, and ``detect`` (run a preprocessor)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from modules.api import encoding

VERSION = 2  # the extension's API version these routes follow


class DetectRequest(BaseModel):
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_images: list[str] | None = None  # what webuiapi's controlnet_detect sends instead
    controlnet_masks: list[str] | None = None
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1


def build_router(route_class: Any) -> APIRouter:
    from modules.controlnet import models, preprocessors

    router = APIRouter(prefix="/controlnet", route_class=route_class, tags=["controlnet"])

    @router.get("/version")
    def version() -> dict:
        return {"version": VERSION}

    @router.get("/model_list")
    def model_list(update: bool = True) -> dict:
        return {"model_list": [models.title(name, path) for name, path in models.list_models().items()]}

    @router.get("/module_list")
    def module_list(alias_names: bool = False) -> dict:
        detail = {}
        for name, preprocessor in preprocessors.PREPROCESSORS.items():
            sliders = [{"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048}] \
                if preprocessor.uses_resolution else []
            for slider in (preprocessor.threshold_a, preprocessor.threshold_b):
                if slider is not None:
                    sliders.append({"name": slider[0], "min": slider[1], "max": slider[2], "value": slider[3]})
            detail[name] = {"model_free": False, "sliders": sliders}
        return {"module_list": list(preprocessors.PREPROCESSORS), "module_detail": detail}

    @router.get("/settings")
    def settings() -> dict:
        from modules.shared import opts

        return {"control_net_unit_count": int(opts.control_net_unit_count)}

    @router.post("/detect")
    def detect(request: DetectRequest) -> dict:
        results = []
        field_name = "controlnet_input_images" if request.controlnet_input_images else "controlnet_images"
        for index, text in enumerate(request.controlnet_input_images or request.controlnet_images or []):
            picture = encoding.decode_image(text, f"{field_name}[{index}]")
            masks = request.controlnet_masks or []
            mask = encoding.decode_image(masks[index], f"controlnet_masks[{index}]") if index < len(masks) else None
            hint = preprocessors.run(request.controlnet_module, picture, request.controlnet_processor_res,
                                     request.controlnet_threshold_a, request.controlnet_threshold_b, mask)
            results.append(encoding.encode_image(hint, "png"))
        return {"images": results, "info": "Success"}

    return router
