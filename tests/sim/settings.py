"""Sweep sizes for the simulator tests, overridable from the environment.

SIM_SEEDS (default 500) seeds of SIM_EVENTS (default 2000) events, over SIM_JOBS (default 2)
worker processes: the CI sweep, and the cap of every planted-bug search.
"""

from __future__ import annotations

import os

SEEDS = int(os.environ.get("SIM_SEEDS", "500"))
EVENTS = int(os.environ.get("SIM_EVENTS", "2000"))
JOBS = int(os.environ.get("SIM_JOBS", "2"))
TIMEOUT = float(os.environ.get("SIM_SEED_TIMEOUT", "60"))  # seconds per seed before a hang
