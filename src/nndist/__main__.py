"""``python -m nndist`` (also under ``torchrun ... -m nndist``)."""

import sys

from .cli import main

sys.exit(main())
