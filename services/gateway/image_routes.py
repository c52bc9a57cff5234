"""GET /v1/images/{id}: the PNGs, for a key or a signed URL (see ``signing``), read from the
storage (DATA_DIR or the S3 bucket) whichever ARTICLEFORGE_STORAGE_IMAGE_URLS is."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from services.common.errors import NotFound
from services.gateway.auth import BEARER, authorize_image
from services.gateway.deps import SettingsDep, StoreDep
from services.gateway.routes import RESPONSES

router = APIRouter(prefix="/v1", tags=["articles"], responses=RESPONSES)


@router.get(
    "/images/{image_id}",
    summary="An article image (PNG, with its parameters chunk).",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The PNG."}},
    dependencies=[Depends(BEARER)],  # a key, or a signed URL (see authorize_image)
)
def get_image(
    image_id: Annotated[
        str, Path(description="Image id.", examples=["img_9b1e2c3d4e5f6a7b8c9d0e1f"])
    ],
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    expires: Annotated[
        int,
        Query(ge=0, description="Of a signed URL: Unix time it expires; 0 = never.", examples=[0]),
    ] = 0,
    signature: Annotated[
        str | None,
        Query(
            max_length=128,
            description="Of a signed URL (as in the article's image `url`): lets the image be "
            "fetched without a key.",
            examples=["m1Xc0yP3kQ2r6vS8tU9wV0xY1zA2bC3dE4fG5hI6jK7"],
        ),
    ] = None,
) -> Response:
    cache_control = authorize_image(request, settings, image_id, expires, signature)
    png = store.load_image(image_id)  # a sync route: the storage call runs in the thread pool
    if png is None:
        raise NotFound(f"no image {image_id!r}", param="image_id")
    # An image id never names other pixels (a redraw gets a new id), so it is the ETag.
    headers = {"Cache-Control": cache_control, "ETag": f'"{image_id}"'}
    return Response(png, media_type="image/png", headers=headers)
