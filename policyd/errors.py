"""policyd's exception tree: the unexpected failures, each carrying the data to explain it.

Expected outcomes are values, not exceptions: invalid policy files come back as
`policyd.source.Invalid` with every problem, an unchanged publish as `Unchanged`, an unknown
revision as `NotFound`. What is raised here is what an operator has to fix by hand.
"""

from __future__ import annotations

from pathlib import Path


class PolicydError(Exception):
    """Base of everything policyd raises on purpose."""


class SigningKeyError(PolicydError):
    """A signing or verify key that cannot be used, or no key where one is required."""

    def __init__(self, path: Path | None, reason: str) -> None:
        self.path = path
        self.reason = reason
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{reason}")


class KeyFileExistsError(PolicydError):
    """keygen refuses to overwrite a key: replacing it silently would orphan every sidecar."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path} already exists; move it away first to rotate keys")


class PublishConflictError(PolicydError):
    """Compare-and-swap kept losing to other writers; a live lock, not a normal race."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(f"bundle publish lost the compare-and-swap {attempts} times in a row")
