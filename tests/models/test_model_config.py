"""ModelConfig's field groups and its checkpoint-metadata form: the groups cover every field
once, in field order; the metadata an older checkpoint holds still loads to the same config."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rmr1_jax.errors import CheckpointError
from rmr1_jax.models import config as mc
from rmr1_jax.models.config import ModelConfig
from rmr1_jax.models.presets import preset


def test_groups_partition_fields_in_order():
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    groups = mc.ARCHITECTURE_FIELDS + mc.EXECUTION_FIELDS + ("source_dir",) + mc.LORA_FIELDS
    assert list(groups) == names


def test_group_accessors_rebuild_the_config():
    cfg = preset("tiny-llama", head="multilabel", num_labels=3, dtype="bfloat16", remat_policy="dots",
                 scan_layers=False, lora_rank=4, lora_targets=("q_proj", "v_proj"))
    assert cfg.execution_kw() == dict(param_dtype="float32", dtype="bfloat16", scan_layers=False,
                                      remat_policy="dots", attention_impl=None)
    assert cfg.lora_kw() == dict(lora_rank=4, lora_alpha=16.0, lora_targets=("q_proj", "v_proj"))
    rebuilt = ModelConfig(**cfg.architecture_kw(), **cfg.execution_kw(), **cfg.lora_kw())
    assert rebuilt == cfg
    # another config run the way this one runs: its architecture is untouched
    other = preset("tiny").replace(**cfg.execution_kw())
    assert other.architecture_kw() == preset("tiny").architecture_kw()
    assert other.execution_kw() == cfg.execution_kw()


def test_checkpoint_metadata_form_is_stable():
    """The metadata a checkpoint stores (``to_dict`` through JSON): flat keys in field order,
    the rope scaling as a dict; it loads back to the same config."""
    cfg = preset("tiny-llama", lora_rank=2)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert list(d) == [f.name for f in dataclasses.fields(ModelConfig)]
    assert d["rope_scaling"] == {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    assert d["eos_token_id"] == [128001, 128008, 128009] and d["lora_targets"] == list(mc.LORA_TARGETS)
    assert ModelConfig.from_dict(d) == cfg


@pytest.mark.parametrize("kw, words", [
    (dict(model_type="gpt2"), "unsupported model_type"),
    (dict(remat_policy="some"), "remat_policy"),
    (dict(attention_impl="flash"), "['auto', 'xla', 'cudnn', 'splash']"),
    (dict(lora_rank=2, lora_alpha=0.0), "lora_alpha"),
    (dict(lora_targets=("q_proj", "q_proj")), "distinct"),
])
def test_each_group_is_checked(kw, words):
    with pytest.raises(CheckpointError, match=None) as e:
        ModelConfig(**kw)
    assert words in str(e.value)
