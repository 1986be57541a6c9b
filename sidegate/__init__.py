"""Sidegate: an AI gateway that runs as a sidecar beside every service pod."""

__version__ = "0.1.0"
