"""Entry point of `python -m rollout`; everything lives in rollout.cli."""

import sys

from rollout.cli import main

sys.exit(main())
