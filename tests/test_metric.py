"""evaluate_bpb, the ground-truth metric, against computations done by hand."""

import math

import torch

import prepare


class FixedLossModel(torch.nn.Module):
    """A stand-in language model whose per-token loss is known in advance: ln(V) (a uniform
    prediction) for ordinary targets, and `special_loss` when the target is a special token."""

    def __init__(self, vocab_size, special_ids, special_loss):
        super().__init__()
        self.vocab_size, self.special_loss = vocab_size, special_loss
        self.special_ids = torch.tensor(sorted(special_ids))

    def forward(self, x, y, reduction="mean"):
        loss = torch.full(y.shape, math.log(self.vocab_size), dtype=torch.float32)
        loss[torch.isin(y, self.special_ids)] = self.special_loss
        return loss.reshape(-1) if reduction == "none" else loss.mean()


def hand_bpb(tokenizer, profile, batch_size, nats_per_token):
    """Bits per byte the long way: decode each target token to its bytes and count."""
    steps = profile.eval_tokens // (batch_size * profile.max_seq_len)
    loader = prepare.make_dataloader(tokenizer, batch_size, profile.max_seq_len, "val", profile)
    special = {tokenizer.enc.encode_single_token(t) for t in prepare.SPECIAL_TOKENS}
    nats, nbytes = 0.0, 0
    for _ in range(steps):
        _, y, _ = next(loader)
        for t in y.reshape(-1).tolist():
            if t in special:
                continue
            nats += nats_per_token
            nbytes += len(tokenizer.enc.decode_single_token_bytes(t))
    return nats / math.log(2) / nbytes


def test_uniform_model_scores_log2_vocab_bits_per_token_over_bytes(tiny_tokenizer, tiny_profile):
    V = tiny_tokenizer.get_vocab_size()
    special = {tiny_tokenizer.enc.encode_single_token(t) for t in prepare.SPECIAL_TOKENS}
    model = FixedLossModel(V, special, special_loss=math.log(V))
    got = prepare.evaluate_bpb(model, tiny_tokenizer, 16, tiny_profile)
    assert math.isclose(got, hand_bpb(tiny_tokenizer, tiny_profile, 16, math.log(V)), rel_tol=1e-6)  # the model computes in float32
    # Sanity: at roughly 3-4 bytes per token, 11 bits per token is about 3 bits per byte.
    assert 2.0 < got < 5.0


def test_special_token_targets_are_left_out(tiny_tokenizer, tiny_profile):
    V = tiny_tokenizer.get_vocab_size()
    special = {tiny_tokenizer.enc.encode_single_token(t) for t in prepare.SPECIAL_TOKENS}
    honest = FixedLossModel(V, special, special_loss=math.log(V))
    wild = FixedLossModel(V, special, special_loss=1e6)  # terrible at predicting BOS
    assert prepare.evaluate_bpb(honest, tiny_tokenizer, 16, tiny_profile) == \
        prepare.evaluate_bpb(wild, tiny_tokenizer, 16, tiny_profile)


def test_the_metric_does_not_depend_on_the_eval_batch_size(tiny_tokenizer, tiny_profile):
    V = tiny_tokenizer.get_vocab_size()
    model = FixedLossModel(V, set(), special_loss=0.0)
    a = prepare.evaluate_bpb(model, tiny_tokenizer, 8, tiny_profile)
    b = prepare.evaluate_bpb(model, tiny_tokenizer, 32, tiny_profile)
    assert math.isclose(a, b, rel_tol=1e-12)


def test_a_better_model_scores_lower(tiny_tokenizer, tiny_profile):
    V = tiny_tokenizer.get_vocab_size()
    worse = FixedLossModel(V, set(), 0.0)
    better = FixedLossModel(V // 4, set(), 0.0)  # ln(V/4) nats per token
    got_worse = prepare.evaluate_bpb(worse, tiny_tokenizer, 16, tiny_profile)
    got_better = prepare.evaluate_bpb(better, tiny_tokenizer, 16, tiny_profile)
    # Two bits less per token, divided by the same bytes.
    assert math.isclose(got_worse / got_better, math.log(V) / math.log(V // 4), rel_tol=1e-9)
