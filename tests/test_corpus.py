"""The offline corpus: deterministic, and with structure a model can learn."""

import math
from collections import Counter

import pyarrow.parquet as pq

import prepare


def test_the_same_seed_gives_the_same_documents():
    assert prepare.synthetic_documents(7, 20) == prepare.synthetic_documents(7, 20)
    assert prepare.synthetic_documents(7, 20) != prepare.synthetic_documents(8, 20)


def test_shards_are_parquet_with_a_text_column_and_identical_when_regenerated(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    prepare.generate_shards([0, 3], a, docs_per_shard=40, workers=1)
    prepare.generate_shards([3, 0], b, docs_per_shard=40, workers=2)  # other order, in parallel
    for name in (prepare.shard_name(0), prepare.shard_name(3)):
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        assert ta.column_names == ["text"] and ta.num_rows == 40
        assert ta.column("text").to_pylist() == tb.column("text").to_pylist()
    assert pq.read_table(a / prepare.shard_name(0)) != pq.read_table(a / prepare.shard_name(3))


def held_out_bits_per_word(train, test, context_weight):
    """Cross-entropy on held-out words of an interpolated bigram model:
    p(w | prev) = context_weight * bigram + (1 - context_weight) * add-one unigram."""
    unigram, bigram, prev_count = Counter(train), Counter(zip(train, train[1:])), Counter(train[:-1])
    vocab = len(unigram) + 1
    total = 0.0
    for prev, w in zip(test, test[1:]):
        p_uni = (unigram[w] + 1) / (len(train) + vocab)
        p_bi = bigram[(prev, w)] / prev_count[prev] if prev_count[prev] else 0.0
        total -= math.log2(context_weight * p_bi + (1 - context_weight) * p_uni)
    return total / (len(test) - 1)


def test_the_previous_word_predicts_the_next_far_better_than_word_frequencies():
    """On held-out documents, knowing the previous word cuts the bits per word by more than
    a third; text with only unigram statistics (the same words shuffled) gains nothing."""
    train = " ".join(prepare.synthetic_documents(3, 400)).split()
    test = " ".join(prepare.synthetic_documents(4, 100)).split()
    unigram_bits = held_out_bits_per_word(train, test, context_weight=0.0)
    bigram_bits = held_out_bits_per_word(train, test, context_weight=0.8)
    assert bigram_bits < 0.7 * unigram_bits  # measured: 5.0 against 8.5 bits; shuffled words: 9.5


def test_facts_hold_across_documents():
    """Corpus-level knowledge: a place is always said to lie in the same region."""
    regions = {}
    for doc in prepare.synthetic_documents(11, 300):
        for line in doc.splitlines():
            if line.startswith("Q: Where is "):
                place = line.split("Q: Where is ")[1].split("?")[0]
                region = line.split("lies in the ")[1].split(",")[0]
                regions.setdefault(place, set()).add(region)
    assert len(regions) > 20
    assert all(len(r) == 1 for r in regions.values())


def test_a_validation_shard_too_small_for_the_metric_is_said_before_training(tmp_path, monkeypatch):
    """Found on the first GPU machine: the generated full-profile validation shard held half the
    tokens evaluate_bpb reads, and each run trained its whole budget before failing. Now prepare
    counts the shard, --check says so, and the training loader refuses before the first step."""
    import dataclasses

    import pytest

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    short = dataclasses.replace(prepare.get_profile("tiny"), synthetic_val_docs=40)
    prepare.prepare(short, synthetic=True, num_shards=1, base_url="", workers=1)
    held = prepare.read_manifest(short)["val_tokens"]
    assert 0 < held < short.eval_tokens
    checks = {c["name"]: c for c in prepare.check(short)["checks"]}
    assert not checks["validation"]["ok"] and f"{held:,} usable tokens" in checks["validation"]["detail"]
    tokenizer = prepare.Tokenizer.from_directory(short)
    with pytest.raises(prepare.HarnessError, match="fewer than the 131,072 evaluate_bpb reads"):
        next(prepare.make_dataloader(tokenizer, 2, short.max_seq_len, "train", short))

    # The profile's own size makes the shard again (another row count) and passes.
    enough = dataclasses.replace(short, synthetic_val_docs=prepare.get_profile("tiny").synthetic_val_docs)
    prepare.prepare(enough, synthetic=True, num_shards=1, base_url="", workers=1)
    assert prepare.read_manifest(enough)["val_tokens"] >= enough.eval_tokens
    assert all(c["ok"] for c in prepare.check(enough)["checks"])
