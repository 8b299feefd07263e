import os
import sys
from pathlib import Path

import pytest

# Tests import envs_for_tests as `envs_for_tests:Class` entry points, also from subprocesses.
TESTS_DIR = Path(__file__).parent
sys.path.insert(0, str(TESTS_DIR))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own directory, so runs/ and mlflow.db never leak between tests."""
    monkeypatch.chdir(tmp_path)
