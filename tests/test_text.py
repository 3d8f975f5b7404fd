"""Text building blocks: tokenizers, corpora, and the sampling rules (top-k, top-p, temperature, banned ids).

The GPT / RNN language models and their generation paths are in test_text_models.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from genforge.data.text import SEPARATOR, TextCorpus, load_text_corpus, split_train_val
from genforge.tokenizers import (ByteTokenizer, StreamDecoder, load_tokenizer, tokenizer_from_json,
                                      train_tokenizer)
from genforge.errors import UserError
from genforge.models.sampling import filter_logits, generate, generate_ids, select_next

ASCII = "The quick brown fox jumps over the lazy dog.\nPack my box with five dozen liquor jugs!\n"
NON_ASCII = "naïve café — 日本語 😀 Ünïcödé, ελληνικά, русский\n"
CONTROL = "a\r\n\tb  \n\n"
CORPUS = (ASCII * 20) + (NON_ASCII * 5) + CONTROL


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


# ---------------------------------------------------------------- tokenizers

@pytest.fixture(scope="module")
def tokenizers():
    return {
        "char": train_tokenizer("char", CORPUS),
        "byte": train_tokenizer("byte", CORPUS),
        "bpe": train_tokenizer("bpe", CORPUS, vocab_size=320),
    }


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
@pytest.mark.parametrize("text", [ASCII, NON_ASCII, "", CONTROL])
def test_round_trip(tokenizers, kind, text):
    tok = tokenizers[kind]
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_vocab_sizes(tokenizers):
    assert tokenizers["char"].vocab_size == len(set(CORPUS)) + 1  # + the unknown id
    assert tokenizers["byte"].vocab_size == 256
    assert 256 < tokenizers["bpe"].vocab_size <= 320
    # BPE merges made the text shorter than its bytes.
    assert len(tokenizers["bpe"].encode(ASCII)) < len(ASCII.encode())


def test_char_unknown_characters_do_not_crash(tokenizers):
    tok = tokenizers["char"]
    ids = tok.encode("dog 🦊 ∑ x")
    assert ids.count(tok.unk_id) == 2
    assert tok.decode(ids) == "dog \ufffd \ufffd x"
    assert tok.decode([tok.vocab_size + 5, -1]) == "\ufffd\ufffd"  # out-of-range ids too
    assert tok.encode_tensor("dog 🦊 ∑ x").tolist() == ids


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_byte_level_encodes_unseen_text(tokenizers, kind):
    tok = tokenizers[kind]
    text = "Ωmega ✓ 🦊 — ₿ 한국어 עברית"  # none of these characters are in CORPUS
    assert tok.decode(tok.encode(text)) == text


def test_byte_decode_replaces_invalid_utf8():
    assert ByteTokenizer().decode([0xE6, 0x97]) == "\ufffd"  # a truncated 3-byte character


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_ids_past_the_vocabulary_decode_as_replacement(tokenizers, kind):
    tok = tokenizers[kind]
    ids = tok.encode("dog") + [tok.vocab_size + 3] + tok.encode("cat")
    assert tok.decode(ids) == "dog\ufffdcat"


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_json_round_trip(tokenizers, kind, tmp_path):
    tok = tokenizers[kind]
    again = tokenizer_from_json(tok.to_json())
    assert json.loads(tok.to_json())["kind"] == kind
    assert again.kind == kind and again.vocab_size == tok.vocab_size
    for text in (ASCII, NON_ASCII, CORPUS):
        assert again.encode(text) == tok.encode(text)
    tok.save(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path).encode(NON_ASCII) == tok.encode(NON_ASCII)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_units_per_token_match_text(tokenizers, kind):
    tok = tokenizers[kind]
    units = tok.units_per_token()
    text = NON_ASCII + ASCII
    assert len(units) == tok.vocab_size
    assert sum(units[i] for i in tok.encode(text)) == tok.count_units(text)
    assert tok.count_units(NON_ASCII) == (len(NON_ASCII) if kind == "char" else len(NON_ASCII.encode()))


def test_bpe_large_text_encoding_matches_single_call(tokenizers):
    tok = tokenizers["bpe"]
    text = (CORPUS + "\n\n\n  indented\n") * 400  # over the chunking threshold
    assert tok.encode(text) == tok.hf.encode(text).ids
    assert tok.encode_tensor(text).tolist() == tok.encode(text)


def test_tokenizer_mistakes_are_user_errors():
    with pytest.raises(UserError, match="vocab_size"):
        train_tokenizer("char", CORPUS, vocab_size=100)
    with pytest.raises(UserError, match="256"):
        train_tokenizer("bpe", CORPUS, vocab_size=100)
    with pytest.raises(UserError, match="kind"):
        train_tokenizer("wordpiece", CORPUS)
    with pytest.raises(UserError):
        tokenizer_from_json("{not json")


def test_stream_decoder_holds_partial_characters():
    tok = ByteTokenizer()
    stream = StreamDecoder(tok)
    pieces = [stream.push(i) for i in tok.encode("日本 ok")]
    assert pieces[:3] == ["", "", "日"]  # no replacement characters while a character is incomplete
    assert "".join(pieces) + stream.flush() == "日本 ok"


# ---------------------------------------------------------------- corpora

def test_corpus_cleaning_counts_everything(tmp_path):
    (tmp_path / "a.txt").write_text("first document: naïve café 日本語 😀\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("second\r\ndocument\n", encoding="utf-8")
    (tmp_path / "sub" / "copy.txt").write_bytes((tmp_path / "a.txt").read_bytes())  # exact duplicate
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\x00\x01\x02")  # binary
    (tmp_path / "latin1.txt").write_bytes("café crème".encode("latin-1"))  # not UTF-8
    (tmp_path / "big.txt").write_text("x" * 5000)  # over the cap below
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / ".hidden.txt").write_text("never read")

    corpus = load_text_corpus(f"text:{tmp_path}", max_file_bytes=1000)
    r = corpus.report
    assert isinstance(corpus, TextCorpus)
    assert (r["files_found"], r["files_loaded"]) == (7, 2)
    assert (r["skipped_binary"], r["skipped_undecodable"], r["skipped_too_large"]) == (1, 1, 1)
    assert (r["duplicates"], r["skipped_empty"]) == (1, 1)
    assert r["bytes"] == (tmp_path / "a.txt").stat().st_size + (tmp_path / "sub" / "b.md").stat().st_size
    # sorted walk order, Windows line ends normalised, documents joined with the separator
    assert corpus.text == "first document: naïve café 日本語 😀\n" + SEPARATOR + "second\ndocument\n"
    assert "never read" not in corpus.text


def test_corpus_glob_code_and_explicit_file(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    return 1\n")
    (tmp_path / "notes.txt").write_text("not code")
    (tmp_path / "huge.txt").write_text("y" * 3000)
    assert load_text_corpus(f"code:{tmp_path}").text == "def f():\n    return 1\n"
    # only a corpus of nothing but Python files counts as Python source
    assert load_text_corpus(f"code:{tmp_path}").python and load_text_corpus(f"text:{tmp_path}/*.py").python
    assert not load_text_corpus(f"text:{tmp_path}").python
    assert load_text_corpus(f"text:{tmp_path}/*.txt", max_file_bytes=100).text == "not code"
    # a file named explicitly is read whatever its size
    assert len(load_text_corpus(f"text:{tmp_path / 'huge.txt'}", max_file_bytes=100).text) == 3000


def test_corpus_errors_name_the_problem(tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01")
    with pytest.raises(UserError, match="binary: 1"):
        load_text_corpus(f"text:{tmp_path}")
    with pytest.raises(UserError, match="does not exist"):
        load_text_corpus(f"text:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="shakespeare"):
        load_text_corpus("shakespear")


def test_embedded_shakespeare():
    corpus = load_text_corpus("shakespeare")
    data = corpus.text.encode("utf-8")
    assert len(data) == 1_115_394
    assert hashlib.sha256(data).hexdigest() == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert corpus.text.startswith("First Citizen:")


def test_tinyshakespeare_falls_back_to_packaged_copy(tmp_path):
    corpus = load_text_corpus("tinyshakespeare", data_dir=tmp_path)
    assert "package copy" in corpus.report["source"] and len(corpus.text) == 1_115_394


def test_python_stdlib_loads():
    corpus = load_text_corpus("python-stdlib", max_files=5)
    assert corpus.report["files_loaded"] == 5 and corpus.report["truncated"] and corpus.python
    assert "def " in corpus.text or "import " in corpus.text


def test_python_stdlib_skips_tests_and_site_packages(tmp_path, monkeypatch):
    for rel in ("a.py", "pkg/b.py", "test/test_a.py", "pkg/tests/t.py", "site-packages/x.py", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    monkeypatch.setattr("genforge.data.text.sysconfig.get_paths", lambda: {"stdlib": str(tmp_path)})
    corpus = load_text_corpus("python-stdlib")
    assert corpus.text == "# a.py\n" + SEPARATOR + "# pkg/b.py\n"


def test_split_train_val_is_fixed_and_contiguous():
    ids = torch.arange(100)
    train, val = split_train_val(ids, 0.1)
    assert torch.equal(train, torch.arange(90)) and torch.equal(val, torch.arange(90, 100))
    with pytest.raises(UserError):
        split_train_val(ids, 1.5)


# ---------------------------------------------------------------- sampling

def test_top_k_keeps_exactly_k():
    torch.manual_seed(0)
    logits = torch.randn(1, 20)
    allowed = set(torch.topk(logits, 3).indices[0].tolist())
    g = torch.Generator().manual_seed(0)
    samples = select_next(logits.expand(4000, 20), temperature=1.0, top_k=3, generator=g).tolist()
    assert set(samples) == allowed
    # ties: still exactly k survivors
    assert torch.isfinite(filter_logits(torch.zeros(1, 10), top_k=4)).sum() == 4


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    g = torch.Generator().manual_seed(0)
    samples = select_next(logits.expand(4000, 4), temperature=1.0, top_p=0.75, generator=g).tolist()
    assert set(samples) == {1, 3}  # 0.5 < 0.75 <= 0.5 + 0.3
    peaked = torch.tensor([[8.0, 0.0, 0.0, 0.0, 0.0]])
    assert set(select_next(peaked.expand(2000, 5), 1.0, top_p=0.9, generator=g).tolist()) == {0}
    # the top token always survives, however small p is
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)).sum() == 1


def test_temperature_zero_is_argmax_and_arguments_are_checked():
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, -1.0, 0.0]])
    assert select_next(logits, temperature=0).tolist() == [1, 0]
    for kwargs in ({"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(UserError):
            generate(None, [[1]], 5, **kwargs)


class UnkLover(torch.nn.Module):
    """A stand-in language model whose favourite next token is always `unk`, by a wide margin."""

    def __init__(self, vocab_size: int, unk: int):
        super().__init__()
        self.vocab_size, self.unk = vocab_size, unk
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def generation_session(self, prompts, use_cache=True):
        model, g = self, torch.Generator().manual_seed(0)

        class Session:
            def push(self, tokens):
                self.logits = torch.randn(len(prompts), model.vocab_size, generator=g)
                self.logits[:, model.unk] = 30.0

        session = Session()
        session.push(None)
        return session


def test_banned_ids_are_never_selected():
    logits = torch.tensor([[0.0, 9.0, 1.0, 8.5], [3.0, 9.0, 2.0, 0.0]])
    banned = torch.tensor([1])
    assert select_next(logits, temperature=0, banned=banned).tolist() == [3, 0]
    g = torch.Generator().manual_seed(0)
    for kwargs in ({}, {"top_k": 1}, {"top_p": 0.01}, {"temperature": 5.0}):
        picks = select_next(logits.repeat(500, 1), generator=g, banned=banned, **kwargs)
        assert 1 not in picks.tolist(), kwargs


@pytest.mark.parametrize("temperature", [0.0, 0.8, 2.0])
def test_generation_never_emits_the_unknown_token(tokenizers, temperature):
    from genforge.artifacts import TextGenerator

    tok = tokenizers["char"]
    model = UnkLover(tok.vocab_size, tok.unk_id)
    # without the ban the model says little but "unknown"
    g = torch.Generator().manual_seed(0)
    assert set(generate_ids(model, [[0]], 20, temperature=temperature, generator=g)[0]) == {tok.unk_id}
    ids = generate_ids(model, [[0], [1, 2]], 50, temperature=temperature, banned_ids=[tok.unk_id], top_k=3)
    assert all(len(row) == 50 and tok.unk_id not in row for row in ids)
    # a loaded model bans its tokenizer's unknown id by itself, prompt with unknown characters included
    lm = TextGenerator(None, {}, model, tok, torch.device("cpu"))
    texts = lm.generate(["🦊 prompt", "x"], max_new_tokens=50, temperature=temperature, seed=1)
    assert all(len(t) == 50 and "\ufffd" not in t for t in texts)
    assert "\ufffd" not in "".join(lm.stream("🦊", max_new_tokens=30, temperature=temperature, top_p=0.5, seed=2))
    with pytest.raises(UserError, match="banned_ids"):
        generate_ids(model, [[0]], 5, banned_ids=[tok.vocab_size])
