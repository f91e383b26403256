"""Request bodies of ``/sdapi/v1``, generated from the processing dataclasses the UI builds its jobs with.

A field added to ``StableDiffusionProcessingTxt2Img`` appears in the txt2img request with the same name and
default, so the UI and the API cannot drift apart (A1111 generates its models from the constructors the
same way). Values are range-checked by ``p.validate()``, which the UI uses too.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from modules import postprocessing, processing

# constructor fields that are engine plumbing, not request parameters (A1111's exclusion list)
EXCLUDED_FIELDS = {"sd_model", "outpath_samples", "outpath_grids", "sampler_index", "extra_generation_params",
                   "overlay_images", "do_not_reload_embeddings", "seed_enable_extras", "prompt_for_display",
                   "sampler_noise_scheduler_override", "ddim_discretize", "comments", "token_merging_ratio",
                   "token_merging_ratio_hr"}
TEXT_FIELDS = {"prompt": str | list[str], "negative_prompt": str | list[str],  # one text, or one per image
               "styles": list[str]}
IMAGE_FIELDS = {"init_images": list[str] | None, "mask": str | None, "latent_mask": str | None,
                "firstpass_image": str | None}  # base64 strings in the request


class ApiModel(BaseModel):
    """Unknown keys are ignored (clients send fields of other A1111 versions); NaN and infinity are refused; a
    field sent as ``null`` means its default (clients send ``"styles": null`` for "none")."""
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


API_ONLY_FIELDS: dict[str, tuple[Any, Any]] = {
    "sampler_index": (str, Field("Euler", description="legacy name of sampler_name; used when sampler_name is empty")),
    "script_name": (str | None, Field(None, description="title of a selectable script (case-insensitive)")),
    "script_args": (list | dict, Field(default_factory=list,
                                       description="the script's arguments: a list in UI order, or an object keyed "
                                                   "by control label or elem_id")),
    "send_images": (bool, Field(True, description="false: the response has no images")),
    "save_images": (bool, Field(False, description="save the results like the UI does")),
    "alwayson_scripts": (dict[str, Any], Field(default_factory=dict,
                                               description='{"<title>": {"args": [...]}}, titles case-insensitive')),
    "infotext": (str | None, Field(None, description="generation parameters text; fills every field not given")),
}


def _request_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    hints = typing.get_type_hints(cls)
    fields: dict[str, tuple[Any, Any]] = {}
    for f in dataclasses.fields(cls):
        if f.name in EXCLUDED_FIELDS:
            continue
        annotation = IMAGE_FIELDS.get(f.name) or TEXT_FIELDS.get(f.name) or hints[f.name]
        if f.default_factory is not dataclasses.MISSING:
            fields[f.name] = (annotation | None, Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (annotation, Field(f.default))
    return fields


def processing_fields(model: type[BaseModel]) -> list[str]:
    """The request fields that are processing-object constructor arguments."""
    return [name for name in model.model_fields if name not in API_ONLY_FIELDS and name != "include_init_images"]


StableDiffusionTxt2ImgProcessingAPI = create_model(
    "StableDiffusionTxt2ImgProcessingAPI", __base__=ApiModel,
    **_request_fields(processing.StableDiffusionProcessingTxt2Img), **API_ONLY_FIELDS)

StableDiffusionImg2ImgProcessingAPI = create_model(
    "StableDiffusionImg2ImgProcessingAPI", __base__=ApiModel,
    **_request_fields(processing.StableDiffusionProcessingImg2Img), **API_ONLY_FIELDS,
    include_init_images=(bool, Field(False, description="echo init_images and mask in `parameters`", exclude=True)))


class ImageResponse(ApiModel):
    images: list[str] | None = Field(None, description="base64 files (no data: prefix), grid first when one was made")
    parameters: dict = Field(description="the request, with defaults filled in")
    info: str = Field(description="Processed.js(): a JSON string (decode it a second time)")


ExtrasBase = create_model("ExtrasBase", __base__=ApiModel, **{
    f.name: (typing.get_type_hints(postprocessing.ExtrasParams)[f.name], Field(f.default))
    for f in dataclasses.fields(postprocessing.ExtrasParams)})


class ExtrasSingleImageRequest(ExtrasBase):
    image: str = Field("", description="base64 image, with or without a data: prefix")
    show_extras_results: bool = True


class FileData(ApiModel):
    data: str = Field(description="base64 image, with or without a data: prefix")
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasBase):
    imageList: list[FileData] = Field(default_factory=list)
    show_extras_results: bool = True


class ExtrasSingleImageResponse(ApiModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(ApiModel):
    html_info: str
    images: list[str]


class PNGInfoRequest(ApiModel):
    image: str


class PNGInfoResponse(ApiModel):
    info: str
    items: dict
    parameters: dict


class InterrogateRequest(ApiModel):
    image: str = ""
    model: str = "clip"


class ProgressResponse(ApiModel):
    progress: float
    eta_relative: float
    state: dict
    current_image: str | None = None
    textinfo: str | None = None
    queued: int = Field(0, description="jobs waiting behind the running one")
    id_task: str | None = Field(None, description="id of the running job")


def extras_params(request: ExtrasBase) -> postprocessing.ExtrasParams:
    return postprocessing.ExtrasParams(**{f.name: getattr(request, f.name)
                                          for f in dataclasses.fields(postprocessing.ExtrasParams)})
