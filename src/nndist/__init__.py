"""nndist: distributions of parameters, features and channel-wise gradients of deep networks."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
