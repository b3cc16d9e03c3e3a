"""Test setup: an 8-device simulated CPU platform, so sharding code runs on a real mesh."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # shared helpers: hf_models

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    assert jax.device_count() == 8, "tests expect 8 simulated CPU devices (XLA_FLAGS set too late?)"
