"""The command line's shared vocabulary: old spellings map onto the new ones with a one-line
note, required options are checked after parsing, ``rmr1 tokenizer train`` trains a tokenizer
on a user's files."""

import json

import pytest

from rmr1_jax.cli import build_parser, main
from rmr1_jax.cli.options import BATCH_SIZE, MAX_NEW_TOKENS, check_required


def _parse(*argv):
    args = build_parser().parse_args(list(argv))
    check_required(args)
    return args


@pytest.mark.parametrize("argv, field, value, note", [
    (["rules", "apply", "--adapter", "A", "--scores", "s", "--out", "o"], "ckpt", "A", "--adapter"),
    (["convert", "hf-to-orbax", "--hf-dir", "H", "--out", "o"], "ckpt", "H", "--hf-dir"),
    (["convert", "orbax-to-hf", "--ckpt", "c", "--out", "o", "--tokenizer-dir", "T"], "tokenizer", "T",
     "--tokenizer-dir"),
    (["judge", "--ckpt", "c", "--pairs", "P"], "inp", "P", "--pairs"),
    (["score-rm", "--ckpt", "c", "--in", "i", "--out", "o", "--truncate"], "overlong", "truncate", "--truncate"),
    (["eval", "--benchmark", "rmb", "--out", "D"], "out_dir", "D", "--out"),
    (["demo", "--out", "D"], "out_dir", "D", "--out"),
])
def test_old_spellings_work_with_a_one_line_note(argv, field, value, note, capsys):
    assert getattr(_parse(*argv), field) == value
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rmr1: note: {note} is deprecated") and "use --" in err[0]


def test_the_same_meaning_has_the_same_default():
    for argv in (["judge", "--ckpt", "c"], ["eval", "--benchmark", "rmb"], ["generate", "--ckpt", "c", "--in", "i",
                 "--out", "o"]):
        assert _parse(*argv).max_new_tokens == MAX_NEW_TOKENS
    for argv in (["judge", "--ckpt", "c"], ["eval", "--benchmark", "rmb"], ["score-rm", "--ckpt", "c", "--in", "i",
                 "--out", "o"], ["rules", "score", "--ckpt", "c", "--in", "i", "--out", "o"],
                 ["rules", "apply", "--ckpt", "c", "--scores", "s", "--out", "o"]):
        assert _parse(*argv).batch_size == BATCH_SIZE


def test_a_missing_required_option_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        main(["rules", "apply", "--scores", "s", "--out", "o"])
    assert e.value.code == 2 and "required: --ckpt" in capsys.readouterr().err


def test_tokenizer_train_on_own_files(tmp_path, capsys):
    from rmr1_jax.text.tokenizer import load_tokenizer

    rows = [{"prompt": [{"role": "user", "content": f"question {i} about apples"}], "chosen": f"answer {i}",
             "rejected": "no"} for i in range(50)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "notes.txt").write_text("Yes No Irrelevant " * 20)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--in", str(tmp_path / "pairs.jsonl"), str(tmp_path / "notes.txt"),
                 "--out", str(out), "--vocab-size", "300"]) == 0
    assert "wrote a SentencePiece tokenizer" in capsys.readouterr().out
    tok = load_tokenizer(str(out))
    text = "question 7 about apples <answer>[[A]]</answer> Yes"
    assert tok.decode(tok.encode(text)) == text
    for word in ("[[A]]", "[[B]]", "Yes", "Irrelevant"):  # the judges' answer words stay one piece
        assert len(tok.encode(word)) == 1, word
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\nnot json\n')
    assert main(["tokenizer", "train", "--in", str(tmp_path / "bad.jsonl"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jsonl:2: invalid JSON" in err[0]
