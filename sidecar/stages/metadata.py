"""Stage `metadata`: identity fields a rule requires, e.g. an endpoint tag on every prod request.

Reports group spend by endpoint tag, user and prompt version; a request without them is spend
nobody can attribute. A `required_metadata` section names the fields that must be present and,
optionally, the environments (the sidecar's `SIDEGATE_ENVIRONMENT`) where that holds.
"""

from __future__ import annotations

from sidecar.context import RequestContext
from sidecar.errors import Reject
from sidecar.pipeline import Violation
from sidecar.stages.identify import H_ENDPOINT, H_PROMPT_VERSION, H_TENANT, H_USER

# Where a caller supplies each field, for the message that tells them what to add.
_HEADERS = {
    "tenant": H_TENANT,
    "user": H_USER,
    "endpoint": H_ENDPOINT,
    "prompt_version": H_PROMPT_VERSION,
}


class RequiredMetadata:
    name = "metadata"

    def __call__(self, ctx: RequestContext) -> Violation | None:
        assert ctx.policy is not None
        section = ctx.policy.required_metadata
        if section is None or section.config.mode == "off":
            return None
        required = section.config
        identity = ctx.identity
        if required.environments and identity.environment not in required.environments:
            return None
        missing = [field for field in required.fields if not getattr(identity, field)]
        if not missing:
            return None
        where = f" in {identity.environment}" if required.environments else ""
        headers = ", ".join(_HEADERS[field] for field in missing)
        return Violation(
            Reject(
                "policy_violation",
                f"Policy `{section.rule}` requires {headers} on every request{where}.",
                code="missing_metadata",
            ),
            rule=section.rule,
            mode=required.mode,
        )
