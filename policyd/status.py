"""The convergence status contract: what each sidecar reports about its bundle (msgspec, stdlib).

Every sidecar writes one `SidecarStatus` into the `STATUS_BUCKET` JetStream KV bucket
(`policyd.bundle.STATUS_BUCKET`) under `status_key(sidecar_id)`, when it starts, whenever it
activates or rejects a bundle, and every `HEARTBEAT_S` seconds in between. policyd reads the
bucket to answer `sidegate policy status`. The sidecar imports this module, so it must stay
dependency-free.

Wire rules as for every wire struct: readers skip unknown fields, new fields get defaults,
fields are never renamed or retyped, units are in names.
"""

from __future__ import annotations

import re

import msgspec

# Entries expire this long after their last write, so pods that are gone leave the bucket on
# their own instead of being listed forever. Whoever creates the bucket first sets it;
# policyd creates it on start.
STATUS_TTL_S = 600.0

# How often a sidecar rewrites its status while nothing changes; well under STALE_AFTER_S so
# one missed beat does not mark a healthy sidecar stale.
HEARTBEAT_S = 15.0

# A status older than this is shown as stale: the sidecar is gone, partitioned or wedged.
STALE_AFTER_S = 60.0

_KEY_UNSAFE = re.compile(r"[^-/_=.a-zA-Z0-9]")


class SidecarStatus(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One sidecar's view of the policy it enforces."""

    sidecar_id: str  # unique per sidecar process, e.g. "<namespace>.<pod>"
    app: str = ""
    namespace: str = ""
    pod: str = ""
    revision: int = 0  # the active bundle's revision; 0: no verified bundle, not ready
    content_hash: str = ""  # the active bundle's content hash
    rejected_revision: int | None = None  # the last bundle this sidecar refused, if any
    rejected_reason: str = ""  # why: "bad signature", "older revision", "schema: ..."
    seen_at_ms: int = 0  # unix milliseconds of this write


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SidecarStatus)


def encode_status(status: SidecarStatus) -> bytes:
    return _encoder.encode(status)


def decode_status(data: bytes) -> SidecarStatus:
    return _decoder.decode(data)


def status_key(sidecar_id: str) -> str:
    """The KV key for a sidecar id: NATS keys allow only `[-/_=.a-zA-Z0-9]`, so map the rest."""
    return _KEY_UNSAFE.sub("_", sidecar_id) or "_"
