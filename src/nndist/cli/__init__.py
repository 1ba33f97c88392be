"""The ``nndist`` command line (:mod:`.app` is the frame, one module per command)."""

from __future__ import annotations

from .app import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
