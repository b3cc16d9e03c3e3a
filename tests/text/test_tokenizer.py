"""The tokenizer interface: HF tokenizer.json against transformers, SentencePiece training, loading."""

import os
import random
import shutil
import time

import pytest

from rmr1_jax.errors import UserError
from rmr1_jax.text.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat
from rmr1_jax.text.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
    train_sentencepiece,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

SAMPLES = [
    "",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n\nand   runs   of spaces",
    "Ünïcödé: café naïve über — “quotes” ‘single’ …",
    "数学答案 日本語のテキスト 한국어 العربية עברית",
    "emoji 😀🎉👍🏽 and ZWJ 👩‍👩‍👧",
    "math: ∫₀¹ x² dx = 1/3, √2 ≈ 1.41421356, 10**9+7",
    "code: def f(x):\n    return {'a': [1, 2, 3]}  # comment",
    "<|im_start|>user\nWhich is better?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_end|><|im_end|>text<|endoftext|>",
    "<think>reasoning</think>\n<answer>[[A]]</answer>",
    "control \x00\x01\x7f chars",
]


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = (
        "the a response answer question rubric judge reward model assistant user helpful honest correct "
        "wrong because therefore better worse evaluate compare reasoning step café 数学 😀 = + 42 3.14"
    ).split()
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + rng.choice([".", "?", "!\n", ":\n\n"])
        for _ in range(n)
    ]


# -- HF tokenizer.json ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def hf_pair(request):
    transformers = pytest.importorskip("transformers")
    path = os.path.join(FIXTURES, request.param)
    return request.param, HFTokenizer(path), transformers.AutoTokenizer.from_pretrained(path)


def test_hf_matches_transformers(hf_pair):
    kind, ours, theirs = hf_pair
    texts = SAMPLES + [
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
        "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
    ]
    for text in texts:
        want = theirs.encode(text, add_special_tokens=False)
        assert ours.encode(text) == want, text
        for skip in (False, True):
            assert ours.decode(want, skip_special_tokens=skip) == theirs.decode(want, skip_special_tokens=skip)
    assert ours.encode_batch(texts) == [theirs.encode(t, add_special_tokens=False) for t in texts]
    assert ours.vocab_size == len(theirs)
    assert ours.eos_id == theirs.eos_token_id
    assert ours.bos_id == theirs.bos_token_id
    assert ours.special_tokens == theirs.special_tokens_map
    assert ours.chat_template == theirs.chat_template
    for token in ("<|im_end|>", "<|eot_id|>", "<tool_call>", "Ġthe", "not-a-token"):
        want = theirs.convert_tokens_to_ids(token)
        assert ours.token_to_id(token) == (None if want == theirs.unk_token_id or want is None else want)
    if theirs.pad_token_id is not None:
        assert ours.pad_id == theirs.pad_token_id


def test_hf_special_ids():
    chatml = HFTokenizer(os.path.join(FIXTURES, "chatml"))
    assert chatml.bos_id is None
    assert chatml.eos_id == chatml.token_to_id("<|im_end|>")
    assert chatml.pad_id == chatml.token_to_id("<|endoftext|>") != 0
    assert chatml.eos_ids == (chatml.eos_id, chatml.token_to_id("<|endoftext|>"))
    assert chatml.encode("<|im_start|>") == [chatml.token_to_id("<|im_start|>")]
    # Non-special added tokens encode to one id and survive skip_special_tokens.
    ids = chatml.encode("<tool_call>x<|im_end|>")
    assert ids[0] == chatml.token_to_id("<tool_call>")
    assert chatml.decode(ids, skip_special_tokens=True) == "<tool_call>x"

    llama = HFTokenizer(os.path.join(FIXTURES, "llama3"))
    eot, eot_text = llama.token_to_id("<|eot_id|>"), llama.token_to_id("<|end_of_text|>")
    assert llama.bos_id == llama.token_to_id("<|begin_of_text|>")
    assert llama.eos_id == eot
    assert llama.pad_id == eot  # no pad token in the files: falls back to eos, not to 0
    assert llama.eos_ids == (eot, eot_text, llama.token_to_id("<|eom_id|>"))
    assert "pad_token" not in llama.special_tokens
    # encode never adds BOS, although the tokenizer.json has a BOS post-processor.
    assert llama.encode("hello")[0] != llama.bos_id


@pytest.mark.parametrize("kind", ["chatml", "llama3"])
def test_hf_round_trip(kind):
    tok = HFTokenizer(os.path.join(FIXTURES, kind))
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text
    assert isinstance(tok, Tokenizer)


def test_hf_save_load(tmp_path):
    src = HFTokenizer(os.path.join(FIXTURES, "llama3"))
    src.save(str(tmp_path / "copy"))
    files = sorted(os.listdir(tmp_path / "copy"))
    assert files == ["generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    copy = load_tokenizer(str(tmp_path / "copy"))
    assert isinstance(copy, HFTokenizer)
    _assert_same(src, copy)


def test_hf_chat_template_file_wins(tmp_path):
    transformers = pytest.importorskip("transformers")
    d = tmp_path / "tok"
    shutil.copytree(os.path.join(FIXTURES, "chatml"), d)
    template = "{% for m in messages %}{{ m.role | upper }}: {{ m.content }}{{ eos_token }}\n{% endfor %}"
    (d / "chat_template.jinja").write_text(template, encoding="utf-8")
    ours = load_tokenizer(str(d))
    assert ours.chat_template == template
    theirs = transformers.AutoTokenizer.from_pretrained(str(d))
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert ours.apply_chat_template(messages) == theirs.apply_chat_template(messages, tokenize=False)
    ours.save(str(tmp_path / "saved"))
    assert load_tokenizer(str(tmp_path / "saved")).chat_template == template


def test_hf_without_template_uses_chatml(tmp_path):
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(os.path.join(FIXTURES, "chatml", "tokenizer.json"), d)
    (d / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>"}', encoding="utf-8")
    tok = load_tokenizer(str(d))
    assert tok.chat_template is None
    assert tok.pad_id == tok.eos_id
    messages = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == render_chat(
        DEFAULT_CHAT_TEMPLATE, messages, True
    )


# -- SentencePiece ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sp")
    train_sentencepiece(_corpus(400), str(out), vocab_size=600, extra_symbols=("<think>", "</think>"))
    return out


def test_sp_special_tokens(sp_dir):
    tok = load_tokenizer(str(sp_dir))
    assert isinstance(tok, SentencePieceTokenizer)
    ids = {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")}
    for text, tid in ids.items():
        assert tid is not None and tok.encode(text) == [tid]
    assert tok.encode("a<|im_end|>b")[1] == ids["<|im_end|>"]
    assert tok.bos_id is None
    assert tok.eos_id == ids["<|im_end|>"]
    assert tok.pad_id == ids["<|endoftext|>"]
    assert tok.pad_id != 0 and tok.pad_id != tok.eos_id
    assert tok.eos_ids == (ids["<|im_end|>"], ids["<|endoftext|>"])
    assert tok.special_tokens == {"eos_token": "<|im_end|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>"}
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert 300 < tok.vocab_size <= 600
    assert all(0 <= i < tok.vocab_size for text in SAMPLES for i in tok.encode(text))
    # Special tokens are dropped by skip_special_tokens, extra symbols are kept.
    ids_ = tok.encode("<|im_start|>user\n<think>x</think><|im_end|>")
    assert tok.decode(ids_, skip_special_tokens=True) == "user\n<think>x</think>"
    assert tok.token_to_id("no such piece") is None


def test_sp_round_trip(sp_dir):
    tok = load_tokenizer(str(sp_dir))
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text, text
    assert tok.encode_batch(SAMPLES) == [tok.encode(t) for t in SAMPLES]


def test_sp_save_load(sp_dir, tmp_path):
    tok = load_tokenizer(str(sp_dir))
    tok.save(str(tmp_path / "copy"))
    assert sorted(os.listdir(tmp_path / "copy")) == ["tokenizer.model", "tokenizer_config.json"]
    for path in (str(tmp_path / "copy"), str(tmp_path / "copy" / "tokenizer.model")):
        _assert_same(tok, load_tokenizer(path))


def test_sp_deterministic(tmp_path):
    texts = _corpus(300, seed=1)
    for model_type in ("bpe", "unigram"):
        a = train_sentencepiece(texts, str(tmp_path / f"{model_type}_a"), vocab_size=500, model_type=model_type, seed=3)
        b = train_sentencepiece(texts, str(tmp_path / f"{model_type}_b"), vocab_size=500, model_type=model_type, seed=3)
        assert a.model_proto == b.model_proto
        assert (tmp_path / f"{model_type}_a" / "tokenizer.model").read_bytes() == a.model_proto
        for text in SAMPLES:
            assert a.encode(text) == b.encode(text)
            assert a.decode(a.encode(text)) == text


def test_sp_training_speed(tmp_path):
    texts = _corpus(2000, seed=2)
    start = time.perf_counter()
    tok = train_sentencepiece(texts, str(tmp_path), vocab_size=2000)
    assert time.perf_counter() - start < 10.0
    assert tok.decode(tok.encode(texts[0])) == texts[0]


def test_sp_plain_model_without_config(tmp_path):
    """A stock SentencePiece model: <s>/</s> are control pieces, no pad piece."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(200)), model_writer=buf, vocab_size=300, byte_fallback=True, minloglevel=2
    )
    (tmp_path / "m.model").write_bytes(buf.getvalue())
    tok = load_tokenizer(str(tmp_path / "m.model"))
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.pad_id == tok.eos_id  # the model has no pad piece: pad with eos
    assert tok.chat_template is None
    ids = tok.encode("<s>hello</s>")
    assert ids[0] == 1 and ids[-1] == 2  # control pieces written as text still map to their ids
    assert tok.decode(ids) == "<s>hello</s>"
    assert tok.decode(ids, skip_special_tokens=True) == "hello"


def test_sp_training_errors(tmp_path):
    with pytest.raises(UserError, match="train_sentencepiece"):
        train_sentencepiece(["tiny corpus"], str(tmp_path), vocab_size=10)
    with pytest.raises(UserError, match="model_type"):
        train_sentencepiece(["x"], str(tmp_path), vocab_size=300, model_type="wordpiece")


# -- loading errors -------------------------------------------------------------------------------


def test_load_errors(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(UserError, match="nope"):
        load_tokenizer(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="empty"):
        load_tokenizer(str(empty))

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": 3', encoding="utf-8")
    with pytest.raises(UserError, match="corrupt") as e:
        load_tokenizer(str(corrupt))
    assert "tokenizer.json" in str(e.value) and "\n" not in str(e.value)

    bad_config = tmp_path / "bad_config"
    shutil.copytree(os.path.join(FIXTURES, "chatml"), bad_config)
    (bad_config / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="bad_config.*tokenizer_config.json"):
        load_tokenizer(str(bad_config))

    bad_eos = tmp_path / "bad_eos"
    shutil.copytree(os.path.join(FIXTURES, "chatml"), bad_eos)
    (bad_eos / "tokenizer_config.json").write_text('{"eos_token": "<|nope|>"}', encoding="utf-8")
    with pytest.raises(UserError, match="eos_token"):
        load_tokenizer(str(bad_eos))

    bad_model = tmp_path / "bad_model"
    bad_model.mkdir()
    (bad_model / "tokenizer.model").write_bytes(b"\x00\x01 definitely not a protobuf \xff" * 10)
    with pytest.raises(UserError, match="bad_model"):
        load_tokenizer(str(bad_model))

    other = tmp_path / "vocab.txt"
    other.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(UserError, match="vocab.txt"):
        load_tokenizer(str(other))


def _assert_same(a: Tokenizer, b: Tokenizer) -> None:
    assert type(a) is type(b)
    for attr in ("vocab_size", "bos_id", "eos_id", "pad_id", "eos_ids", "chat_template", "special_tokens"):
        assert getattr(a, attr) == getattr(b, attr), attr
    for text in SAMPLES:
        assert a.encode(text) == b.encode(text)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]
    assert a.apply_chat_template(messages, date_string="1 Jan 2025") == b.apply_chat_template(
        messages, date_string="1 Jan 2025"
    )
