"""What a newcomer with their own data meets first: a quiet CPU run, and errors that name the
option, file or field at fault."""

from __future__ import annotations

import json

import pytest

from rmr1_jax.cli.platforms import skip_absent_tpu


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from rmr1_jax.text.tokenizer import train_sentencepiece

    texts = ["Which reply is better? A said four, B said five."] * 4 + ["The answer is four."] * 4
    return train_sentencepiece(texts, str(tmp_path_factory.mktemp("tok")), vocab_size=400)


def _write_rows(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


PAIRS = [{"prompt": f"What is 2 + {i}?", "chosen": str(2 + i), "rejected": str(3 + i)} for i in range(3)]


# ---------------------------------------------------------------------------------------------
# 1. A CPU run is quiet: no libtpu probe without a TPU, no TFDS download banner
# ---------------------------------------------------------------------------------------------


def _host(tmp_path, *nodes) -> str:
    root = tmp_path / "host"
    for node in nodes:
        (root / node).parent.mkdir(parents=True, exist_ok=True)
        (root / node).write_text("0x1ae0" if node.endswith("vendor") else "")
    root.mkdir(exist_ok=True)
    return str(root)


def test_cpu_host_with_libtpu_skips_the_tpu_probe(tmp_path):
    env = {"TPU_LIBRARY_PATH": "/opt/libtpu.so"}
    assert skip_absent_tpu(env, root=_host(tmp_path)) is True
    assert env["JAX_PLATFORMS"] == "cpu"


@pytest.mark.parametrize("nodes,env", [
    (("dev/accel0",), {}),  # TPU v4 VM
    (("dev/vfio/0",), {}),  # TPU v5e/v6e VM
    (("sys/bus/pci/devices/0000:00:04.0/vendor",), {}),  # a Google TPU on the PCI bus
    (("dev/nvidiactl",), {}),  # a GPU host: JAX picks CUDA
    ((), {"JAX_PLATFORMS": ""}),  # the user's own choice, even "any"
    ((), {"JAX_FORCE_TPU_INIT": "1"}),
    ((), {"TPU_WORKER_HOSTNAMES": "10.0.0.2"}),
], ids=["accel", "vfio", "pci", "gpu", "jax_platforms", "force_tpu", "tpu_env"])
def test_tpu_gpu_and_explicit_choices_are_left_to_jax(tmp_path, nodes, env):
    env = {"TPU_LIBRARY_PATH": "/opt/libtpu.so", **env}
    before = dict(env)
    assert skip_absent_tpu(env, root=_host(tmp_path, *nodes)) is False
    assert env == before


def test_without_libtpu_nothing_changes(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    env = {}
    assert skip_absent_tpu(env, root=_host(tmp_path)) is False and env == {}


def test_record_build_prints_no_download_banner(tmp_path, tok, capfd):
    from rmr1_jax.data.records import RecordOptions, build_records

    path = _write_rows(tmp_path / "pairs.jsonl", PAIRS)
    lines = []
    build_records(str(tmp_path / "cache"), {"train": [path]}, tok, None,
                  RecordOptions(kind="pair", max_length=256), log=lines.append)
    out, err = capfd.readouterr()
    assert "Downloading and preparing" not in out + err
    assert "downloaded and prepared" not in out + err
    assert lines == ["data[train]: 3 written of 3 rows"]
