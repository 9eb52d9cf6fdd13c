"""The dataloader: BOS-aligned rows, best-fit packing, no padding."""

import numpy as np
import pytest

import prepare

BOS = 0


def make_docs(lengths):
    """Documents whose tokens say which document and position they come from: doc d's token at
    position p is 1000 * (d + 1) + p, except position 0, which is BOS."""
    return [[BOS] + [1000 * (d + 1) + p for p in range(1, n)] for d, n in enumerate(lengths)]


def split_at_bos(row):
    starts = [i for i, t in enumerate(row) if t == BOS]
    return [list(row[a:b]) for a, b in zip(starts, starts[1:] + [len(row)])]


def test_rows_have_exact_length_start_with_bos_and_hold_document_prefixes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 40, size=500).tolist()
    docs = make_docs(lengths)
    rows = list(prepare.pack_rows(iter(docs), row_len=33, buffer_size=50))
    assert len(rows) > 100
    used = set()
    for row in rows:
        assert len(row) == 33
        assert row[0] == BOS
        segments = split_at_bos(row)
        for k, seg in enumerate(segments):
            d = seg[1] // 1000 - 1 if len(seg) > 1 else None
            if d is None:  # a lone BOS: a one-token crop of some document
                continue
            assert d not in used, "a document appears twice"
            used.add(d)
            assert seg == docs[d][: len(seg)], "a segment is not a prefix of its document"
            if k < len(segments) - 1:
                assert len(seg) == len(docs[d]), "only a row's last document may be cropped"


def test_best_fit_takes_the_longest_document_that_fits():
    docs = make_docs([7, 5, 3, 2])
    row = next(prepare.pack_rows(iter(docs), row_len=10, buffer_size=10))
    lengths = [len(s) for s in split_at_bos(row)]
    assert lengths == [7, 3]  # 7 fits first; then 3 fills the last 3 exactly (5 does not fit)


def test_when_nothing_fits_the_shortest_document_is_cropped():
    docs = make_docs([9, 6, 8])
    rows = list(prepare.pack_rows(iter(docs), row_len=12, buffer_size=10))
    assert [len(s) for s in split_at_bos(rows[0])] == [9, 3]  # the 6-token doc cropped to 3
    assert split_at_bos(rows[0])[1] == docs[1][:3]


def test_no_row_is_padded_when_the_source_runs_dry():
    docs = make_docs([5, 5, 5])
    rows = list(prepare.pack_rows(iter(docs), row_len=8, buffer_size=10))
    assert all(len(r) == 8 for r in rows)
    assert len(rows) == 1  # 15 tokens make one full row of 8; the rest is dropped, not padded


def test_dataloader_yields_shifted_int64_batches(tiny_tokenizer, tiny_profile):
    loader = prepare.make_dataloader(tiny_tokenizer, 4, 64, "train", tiny_profile)
    x, y, epoch = next(loader)
    assert x.shape == y.shape == (4, 64)
    assert str(x.dtype) == "torch.int64"
    assert (x[:, 0] == tiny_tokenizer.get_bos_token_id()).all()
    assert (x[:, 1:] == y[:, :-1]).all()
    assert epoch == 1


def test_dataloader_counts_epochs_over_the_training_shards(tiny_tokenizer, tiny_profile):
    loader = prepare.make_dataloader(tiny_tokenizer, 64, 256, "train", tiny_profile)
    epochs = [next(loader)[2] for _ in range(200)]
    assert epochs[0] == 1 and max(epochs) >= 2
    assert epochs == sorted(epochs)


def test_validation_batches_are_the_same_every_time(tiny_tokenizer, tiny_profile):
    a = prepare.make_dataloader(tiny_tokenizer, 4, 64, "val", tiny_profile)
    b = prepare.make_dataloader(tiny_tokenizer, 4, 64, "val", tiny_profile)
    for _ in range(3):
        (xa, ya, _), (xb, yb, _) = next(a), next(b)
        assert (xa == xb).all() and (ya == yb).all()


def test_the_validation_split_ends_instead_of_cycling(tiny_tokenizer, tiny_profile):
    loader = prepare.make_dataloader(tiny_tokenizer, 64, 256, "val", tiny_profile)
    batches = sum(1 for _ in loader)
    tokens = batches * 64 * 256
    assert tiny_profile.eval_tokens <= tokens < 10 * tiny_profile.eval_tokens


@pytest.mark.parametrize("split", ["bogus"])
def test_an_unknown_split_is_refused(tiny_tokenizer, tiny_profile, split):
    with pytest.raises(ValueError):
        next(prepare.make_dataloader(tiny_tokenizer, 1, 8, split, tiny_profile))
