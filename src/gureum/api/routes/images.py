"""Images: build from Debian packages, import and export disk image files, list, verify,
delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from gureum.api.accepted import accepted, starts_operation
from gureum.api.auth import AnyUser, Member, Super, enter
from gureum.api.deps import services
from gureum.api.errors import COMMON_RESPONSES
from gureum.api.schemas import ImageIn, ImageOut, TemplateIn, TemplatesRemovedOut
from gureum.model.hardware import Firmware
from gureum.model.image import Image
from gureum.model.tenancy import Principal, Role
from gureum.service.core import Services
from gureum.service.tenancy import TenancyService

router = APIRouter(prefix="/v1/images", tags=["images"], responses=COMMON_RESPONSES)
Svc = Annotated[Services, Depends(services)]


def _view(image: Image, who: Principal) -> dict[str, object]:
    """An image as the caller may see it: where it lies on the host is the administrator's."""
    view = image.to_dict()
    if not who.superuser:
        view["path"] = None
    return view


def _visible(svc: Services, image: str, who: Principal) -> Image:
    """The image if the caller may see it: another project's image is not found (404)."""
    return svc.images.get(image, svc.tenancy.project_ids(who))


@router.get("", response_model=list[ImageOut], openapi_extra={"x-gureum-role": "user"})
async def list_images(svc: Svc, who: AnyUser) -> list[dict[str, object]]:
    """The host's catalog and the images of the caller's projects."""
    return [_view(i, who) for i in svc.images.list(svc.tenancy.project_ids(who))]


@router.get("/{image}", response_model=ImageOut, openapi_extra={"x-gureum-role": "user"})
async def get_image(image: str, svc: Svc, who: AnyUser) -> dict[str, object]:
    """The catalog entry, and the image's templates (each with how many clones it has)."""
    found = _visible(svc, image, who)
    templates = svc.templates.list(image, detail=who.superuser)
    return {**_view(found, who), "templates": templates}


@starts_operation(router, "", "member")
async def create_image(body: ImageIn, svc: Svc, scope: Member) -> JSONResponse:
    """An image of the project's own from one of its VMs, running (it keeps running: its disk
    is copied through a snapshot) or stopped; the operation's result is ``{image}``. The
    image is seen and launched by the project's members alone, and counts against its
    snapshot quota. Names are one namespace on the host: a taken one is refused (409)."""
    op = await svc.capture.capture(body.instance, body.name, scope.project_id, body.description)
    return accepted(op)


@starts_operation(router, "/{image}/template", "superuser")
async def make_template(image: str, body: TemplateIn, svc: Svc, _: Super) -> JSONResponse:
    """Boot the image once, let it settle and save it running as its template of this shape:
    later launches of that shape (and the image's own disk size) are clones of it. Refused for
    images provisioned by cloud-init, and for a shape that has a template (409)."""
    return accepted(svc.templates.make(image, body.cpus, body.memory_mib, body.nics))


@starts_operation(router, "/{image}/build", "superuser")
async def build_image(image: str, svc: Svc, _: Super) -> JSONResponse:
    """Build (or confirm up to date) an image from its recipe; returns the operation."""
    return accepted(svc.images.build(image))


@starts_operation(router, "/{image}/verify", "superuser")
async def verify_image(image: str, svc: Svc, _: Super) -> JSONResponse:
    """Recompute every file's checksum against the catalog, as an operation (it reads the
    whole image); its result is ``{name, ok, problems}``."""
    return accepted(svc.images.verify(image))


@router.post(
    "/{image}/import",
    status_code=201,
    response_model=ImageOut,
    openapi_extra={"x-gureum-role": "superuser"},
)
async def import_image(
    image: str,
    request: Request,
    svc: Svc,
    _: Super,
    default_user: Annotated[
        str | None, Query(description="who `gureum ssh` logs in as (the image's cloud-init user)")
    ] = None,
    firmware: Annotated[
        Firmware | None,
        Query(
            description="what boots it; by default what its first sectors show: bios when "
            "its MBR has boot code, else uefi when it has an EFI system partition"
        ),
    ] = None,
) -> dict[str, object]:
    """A disk image file in the body (qcow2 or raw, streamed), booted from its own bootloader
    by SeaBIOS or OVMF. Checked before anything is kept: a qcow2 naming a backing or data file,
    a file that is not a disk some firmware boots, one cut short or over
    ``image_import_max_bytes`` is refused (``invalid-image``) and nothing is left."""
    chosen = firmware.value if firmware else None
    made = await svc.images.import_(request.stream(), image, default_user, chosen)
    return made.to_dict()


@router.get(
    "/{image}/disk",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the disk"}},
    openapi_extra={"x-gureum-role": "superuser"},
)
async def export_image(image: str, svc: Svc, _: Super) -> FileResponse:
    """The image's disk as a qcow2 file another QEMU or cloud boots from its bootloader (an
    imported image's; a built image boots its kernel directly and is refused, 409)."""
    path = svc.images.export_path(image)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{image}.qcow2")


@router.delete(
    "/{image}/templates", response_model=TemplatesRemovedOut,
    openapi_extra={"x-gureum-role": "superuser"},
)  # fmt: skip
async def remove_templates(image: str, svc: Svc, _: Super) -> dict[str, object]:
    """Delete the image's templates no instance was cloned from (their saved machines, disk
    layers and memory files); later launches boot until a template is made again."""
    return {"image": image, "removed": await svc.templates.remove(image)}


@router.delete("/{image}", response_model=ImageOut, openapi_extra={"x-gureum-role": "user"})
async def delete_image(image: str, request: Request, svc: Svc, who: AnyUser) -> dict[str, object]:
    """The image, its files and its templates; refused while instances use it (409). The
    host's catalog is the administrator's; a project's own image its members' (a viewer of it
    403, anyone else 404)."""
    found = _visible(svc, image, who)
    if found.project_id is None:
        TenancyService.require_superuser(who)
    else:
        enter(request, who, found.project_id, Role.MEMBER)
    return (await svc.templates.delete_image(image)).to_dict()
