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


# The slowest test files, slowest first (from `launch/test.sh --durations`; docs/test-suite.md).
# With `--dist loadfile` xdist hands each worker one file at a time, in collection order; a file
# that takes two minutes collected last would run alone at the end while the other worker idles.
# So these files are collected first (longest processing time first), every file's tests staying
# together and in their own order; the others follow in their usual order. A rough order is
# enough: a file missing from this list only starts later.
SLOW_FILES = (
    "tests/train/test_lora_training.py",
    "tests/parallel/test_multihost_commands.py",
    "tests/train/test_learning.py",
    "tests/test_demo.py",
    "tests/train/test_multihost_equality.py",
    "tests/train/test_resume.py",
    "tests/plan/test_plan.py",
    "tests/train/test_reward_model_hf.py",
    "tests/test_own_data.py",
    "tests/parallel/test_multiprocess.py",
    "tests/models/test_lora.py",
    "tests/train/test_grpo_resume.py",
    "tests/test_ramo_demo.py",
    "tests/train/test_preemption_multiprocess.py",
    "tests/train/test_runner.py",
    "tests/train/test_reward_model.py",
    "tests/train/test_rule_adapter.py",
    "tests/test_readme.py",
    "tests/rules/test_scoring_multiprocess.py",
    "tests/train/test_grpo_rollout.py",
)


def pytest_configure(config):
    # xdist's loadfile scheduler by default reorders the files by their number of tests, which
    # says little about their time; keep the collection order set below.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {f: i for i, f in enumerate(SLOW_FILES)}
    root = str(config.rootpath)

    def file_rank(item):
        path = os.path.relpath(str(item.path), root).replace(os.sep, "/")
        return rank.get(path, len(SLOW_FILES))

    items[:] = [item for _, item in sorted(enumerate(items), key=lambda t: (file_rank(t[1]), t[0]))]
