"""receiver: push-based FLUX-family image generation with durable archiving."""

from __future__ import annotations

__version__ = "0.1.0"
