"""Sub-commands of the ``nndist`` CLI, one module each (``add_parser`` and ``run``)."""
