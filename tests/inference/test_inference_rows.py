"""The inference package's front door and its input rows: importing ``rmr1_jax.inference`` does
not load JAX (its names load on first use), every input row is checked with one error naming
``file:line``, and thinking-template prompts are found once per prompt."""

import json
import subprocess
import sys

import pytest

from rmr1_jax.errors import DataError
from rmr1_jax.inference import judge, rows


def test_import_is_cheap_and_names_load_on_first_use():
    code = ("import sys, rmr1_jax.inference as inf; assert 'jax' not in sys.modules, 'jax imported'; "
            "assert callable(inf.check_prompt) and 'jax' not in sys.modules; "
            "assert inf.judge_pairs.__module__ == 'rmr1_jax.inference.judge'; "
            "assert inf.reward.score_file.__module__ == 'rmr1_jax.inference.reward'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def _jsonl(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return str(path)


@pytest.mark.parametrize("bad, needle", [
    ("{broken", "invalid JSON"),
    ("[1, 2]", "row is not a JSON object"),
    ({"prompt": "q", "a": "x"}, "needs non-empty 'prompt', 'a' and 'b'"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}], "a": "x", "b": "y"},
     "ends with an assistant turn"),
])
def test_read_pairs_names_file_and_line(tmp_path, bad, needle):
    path = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "a": "x", "b": "y"}, "", bad])
    with pytest.raises(DataError) as e:
        rows.read_pairs(path)
    assert str(e.value).startswith(f"{path}:3: ") and needle in str(e.value)


def test_read_pairs_keeps_rows_and_reads_response_fields(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "response_a": "x", "response_b": "y", "id": 7}])
    assert rows.read_pairs(path) == [(1, {"prompt": "q", "response_a": "x", "response_b": "y", "id": 7})]
    assert rows.pair_of(rows.read_pairs(path)[0][1], "here") == ("q", "x", "y")
    with pytest.raises(DataError, match="no pairs to judge"):
        rows.read_pairs(_jsonl(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(DataError, match="input file not found"):
        rows.read_pairs(str(tmp_path / "missing.jsonl"))


def test_score_and_rule_rows(tmp_path):
    path = _jsonl(tmp_path / "in.jsonl", [{"text": "t"}, {"prompt": "q", "response": "r"},
                                          {"prompt": "q", "a": "x", "b": "y"},
                                          {"prompt": "q", "chosen": "x", "rejected": "y"}])
    assert [k for _, _, k in rows.read_score_rows(path)] == ["text", "response", "pair", "preference"]
    with pytest.raises(DataError, match=r"in\.jsonl:1: expected a JSON object with 'prompt' and 'response'"):
        rows.read_rule_rows(path)
    assert rows.conversation("q", "r") == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]


def test_prompts_open_thinking_decodes_each_prompt_once():
    class Tok:
        calls = 0

        def decode(self, ids):
            Tok.calls += 1
            return "".join({1: "<|Assistant|>", 2: "<think>\n", 3: "</think>"}[i] for i in ids)

    assert judge.prompts_open_thinking(Tok(), [[1, 2], [1], [2, 3], [2, 3, 1, 2]]) == [True, False, False, True]
    assert Tok.calls == 4
