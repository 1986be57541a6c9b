"""Stage `parse`: decode the body into the route's view, or reject it in the caller's format."""

from __future__ import annotations

import msgspec

from sidecar.context import RequestContext
from sidecar.errors import Reject

_PATH_MARK = " - at `$."


class Parse:
    name = "parse"

    def __call__(self, ctx: RequestContext) -> Reject | None:
        if not ctx.body:
            return Reject(
                "invalid_request", "The request body is empty; expected a JSON object.",
                code="invalid_json",
            )  # fmt: skip
        try:
            view = ctx.route.decoder.decode(ctx.body)
        except msgspec.ValidationError as exc:
            # msgspec says e.g. "Expected `str`, got `int` - at `$.model`": keep the path.
            text = str(exc)
            param = text.rpartition(_PATH_MARK)[2].rstrip("`") if _PATH_MARK in text else None
            return Reject(
                "invalid_request", f"Invalid request body: {text}",
                code="invalid_request_body", param=param,
            )  # fmt: skip
        except msgspec.DecodeError as exc:
            return Reject(
                "invalid_request", f"The request body is not valid JSON: {exc}",
                code="invalid_json",
            )  # fmt: skip
        if not view.model:
            return Reject(
                "invalid_request", "You must provide a model parameter.",
                code="missing_model", param="model",
            )  # fmt: skip
        ctx.view = view
        return None
