"""The tokenizer prepare.py trains: rustbpe merges, used through tiktoken."""

import prepare

SAMPLES = [
    "Kalo is a miller from Tavir, a town in the north.",
    "12 + 7 = 19\n30 - 4 = 26",
    "Unicode survives: naïve café, Ελληνικά, 日本語, emoji 🚀 and tabs\tand  double  spaces.",
    "",
]


def test_encode_then_decode_gives_back_the_text(tiny_tokenizer):
    for text in SAMPLES:
        ids = tiny_tokenizer.encode([text], prepend_bos=False)[0]
        assert tiny_tokenizer.decode(ids) == text


def test_every_document_starts_with_bos(tiny_tokenizer):
    rows = tiny_tokenizer.encode(SAMPLES)
    assert all(row[0] == tiny_tokenizer.get_bos_token_id() for row in rows)
    assert all(tiny_tokenizer.get_bos_token_id() not in row[1:] for row in rows)


def test_vocabulary_has_the_profile_size(tiny_tokenizer, tiny_profile):
    assert tiny_tokenizer.get_vocab_size() == tiny_profile.vocab_size
    assert len(tiny_tokenizer.token_bytes) == tiny_profile.vocab_size


def test_token_bytes_are_utf8_lengths_and_zero_for_special_tokens(tiny_tokenizer):
    enc = tiny_tokenizer.enc
    special_ids = {enc.encode_single_token(t) for t in prepare.SPECIAL_TOKENS}
    for token_id in range(enc.n_vocab):
        expected = 0 if token_id in special_ids else len(enc.decode_single_token_bytes(token_id))
        assert tiny_tokenizer.token_bytes[token_id] == expected


def test_bpe_compresses_the_corpus_well_beyond_bytes(tiny_tokenizer):
    docs = prepare.synthetic_documents(seed=99, count=50)
    text_bytes = sum(len(d.encode()) for d in docs)
    tokens = sum(len(r) for r in tiny_tokenizer.encode(docs, prepend_bos=False))
    assert text_bytes / tokens > 2.5  # a byte-level fallback would give 1.0
