"""The checkout's folders, for tests wherever they sit under ``tests/``."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
