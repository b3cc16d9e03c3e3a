"""The README's "Bring your own data" walkthrough runs exactly as written, from an empty
directory: the block README.md marks ``<!-- test: own-data -->`` (tests/readme_blocks.py) is
run by bash with ``set -euo pipefail``, as a user with the virtualenv active would paste it.
Its first step copies the example files and recipes out of the installed clone, so nothing
but the package is needed. A few minutes on 2 cores (tiny models, tens of steps)."""

import json
import os
import subprocess

import pytest

from readme_blocks import marked_blocks, user_env


def _rows(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.slow
def test_own_data_walkthrough(tmp_path):
    blocks = marked_blocks("own-data")
    assert len(blocks) == 1, "README.md must mark exactly one own-data walkthrough"
    script = tmp_path / "walkthrough.sh"
    script.write_text("set -euo pipefail\n" + blocks[0])
    work = tmp_path / "project"
    work.mkdir()
    p = subprocess.run(["bash", str(script)], cwd=work, env=user_env(), capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, f"walkthrough failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"

    own = work / "runs" / "own"
    assert (own / "tokenizer" / "tokenizer.model").exists()
    scored = _rows(own / "rm_scores.jsonl")
    assert len(scored) == 12 and all({"score_a", "score_b", "preferred"} <= set(r) for r in scored)
    rule_scores = _rows(own / "rule_scores.jsonl")
    assert len(rule_scores) == 24 and all(len(r["scores"]) == len(r["relevance"]) == 4 for r in rule_scores)
    labels = _rows(own / "labels.jsonl")
    assert labels and all(len(r["rule_indices"]) == 2 and {"chosen", "rejected"} <= set(r) for r in labels)
    assert json.load(open(own / "diagnostics.json"))
    assert _rows(own / "adapter_labels.jsonl")
    assert os.path.isdir(own / "adapter" / "checkpoints")
    cfg = json.load(open(own / "rm-from-rules-hf" / "config.json"))
    assert cfg["architectures"][0].endswith("ForSequenceClassification") and cfg["num_labels"] == 1
