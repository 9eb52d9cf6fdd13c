"""
The training program: a small GPT trained for a fixed wall-clock budget, then scored by
val_bpb from the fixed harness (prepare.py). This is the ONE file research agents edit.

Run from the repository root:  python -m trainer.train
It prints progress lines, then `---` and a `key: value` summary (the run contract).
"""

import time

T_PROCESS_START = time.time()  # before the heavy imports, so startup_seconds is honest

import gc
import hashlib
import math
import os
import sys
import threading
import urllib.request
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # prepare.py lives at the root
import prepare  # noqa: E402

# ---------------------------------------------------------------------------------------
# Device and profile: CUDA runs the `full` profile, a CPU the `tiny` one
# ---------------------------------------------------------------------------------------

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROFILE = prepare.get_profile(device_type=DEVICE).name

# ---------------------------------------------------------------------------------------
# Hyperparameters: change a line here to run an experiment
# ---------------------------------------------------------------------------------------

# Model size, per profile (`full`: upstream's one-H100 setup; `tiny`: a laptop CPU).
DEPTH = {"full": 8, "tiny": 3}[PROFILE]  # transformer blocks
ASPECT_RATIO = {"full": 64, "tiny": 32}[PROFILE]  # width = DEPTH * ASPECT_RATIO, rounded up to HEAD_DIM
HEAD_DIM = {"full": 128, "tiny": 32}[PROFILE]
DEVICE_BATCH_SIZE = {"full": 128, "tiny": 16}[PROFILE]  # rows per forward/backward
TOTAL_BATCH_SIZE = {"full": 2**19, "tiny": 2**12}[PROFILE]  # tokens per optimizer step

# Architecture
WINDOW_PATTERN = "SSSL"  # per layer: S = short sliding window, L = full context; last layer is always L
SHORT_WINDOW_DIVISOR = 2  # short window = context // this
LOGIT_SOFTCAP = 15.0
ROPE_BASE = 10_000
VE_GATE_CHANNELS = 32  # input channels the value-embedding gate looks at

# Optimization
MATRIX_LR = 0.04  # Muon, for the blocks' matrices
EMBEDDING_LR = 0.6  # AdamW, token and value embeddings
UNEMBEDDING_LR = 0.004  # AdamW, lm_head
SCALAR_LR = 0.5  # AdamW, per-layer residual scalars
WEIGHT_DECAY = 0.2  # Muon matrices, decays to 0 over the run
ADAM_BETAS = (0.8, 0.95)
MUON_MOMENTUM = 0.95  # warmed up from 0.85 over the first 300 steps
WARMUP_RATIO = 0.0  # fractions of the time budget
WARMDOWN_RATIO = 0.5
FINAL_LR_FRAC = 0.0
# Weber bracket W = 1 - v^2/(2c^2) + v.a/c^2 on each update (v: momentum, a: its change),
# after the DeepBlueDynamics fork. 0 turns it off.
WEBER_C_SQ = 0.0

SEED = None  # None: drawn fresh (from $AUTORESEARCH_ENTROPY_URL if set); printed either way
COMPILE = DEVICE == "cuda"  # torch.compile pays off on a GPU; on a CPU its start-up dominates

# ---------------------------------------------------------------------------------------
# Attention: one function, three backends, the same sliding-window causal attention
# ---------------------------------------------------------------------------------------
# `window` is the number of keys a query sees, itself included: query i attends to keys j
# with i - window < j <= i. Every backend must compute exactly this.

FA3_LOAD_TIMEOUT = 10.0  # seconds; offline, the hub client would otherwise retry for ~25 s


def _load_fa3():
    """Flash Attention 3 from the kernels hub, only on Hopper and only if it loads quickly."""
    if DEVICE != "cuda" or torch.cuda.get_device_capability()[0] != 9:
        return None
    box = {}

    def load():
        try:
            from kernels import get_kernel

            box["fa3"] = get_kernel("kernels-community/flash-attn3", revision="main")
        except Exception as e:  # noqa: BLE001 -- any failure means: use the fallback
            box["error"] = e

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(FA3_LOAD_TIMEOUT)
    return box.get("fa3")


def _flex_available():
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return DEVICE == "cuda"  # flex's backward needs CUDA (CPU raises NotImplementedError)


_FA3 = _load_fa3()
ATTENTION_BACKEND = "fa3" if _FA3 is not None else "flex" if _flex_available() else "sdpa"
_mask_cache = {}


def _flex_block_mask(window, seq_len, device):
    from torch.nn.attention.flex_attention import create_block_mask

    key = ("flex", window, seq_len, str(device))
    if key not in _mask_cache:
        def sliding_causal(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

        _mask_cache[key] = create_block_mask(sliding_causal, None, None, seq_len, seq_len, device=device)
    return _mask_cache[key]


def _flex_kernel(on_cuda):
    """flex_attention, compiled on CUDA: uncompiled it materialises the whole score matrix."""
    from torch.nn.attention.flex_attention import flex_attention

    if not on_cuda:
        return flex_attention
    if "flex_kernel" not in _mask_cache:
        _mask_cache["flex_kernel"] = torch.compile(flex_attention, dynamic=False)
    return _mask_cache["flex_kernel"]


def _sdpa_mask(window, seq_len, device):
    key = ("sdpa", window, seq_len, str(device))
    if key not in _mask_cache:
        i = torch.arange(seq_len, device=device)
        distance = i[:, None] - i[None, :]
        _mask_cache[key] = (distance >= 0) & (distance < window)
    return _mask_cache[key]


def attention(q, k, v, window, backend=None):
    """Causal attention over a sliding window. q, k, v: (batch, time, heads, head_dim)."""
    backend = backend or ATTENTION_BACKEND
    seq_len = q.size(1)
    if backend == "fa3":
        out = _FA3.flash_attn_func(q, k, v, causal=True, window_size=(window - 1, 0))
        return out[0] if isinstance(out, tuple) else out
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (batch, heads, time, head_dim)
    if backend == "flex":
        y = _flex_kernel(q.is_cuda)(q, k, v, block_mask=_flex_block_mask(window, seq_len, q.device))
    elif window >= seq_len:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=_sdpa_mask(window, seq_len, q.device))
    return y.transpose(1, 2)


# ---------------------------------------------------------------------------------------
# Model: GPT with RoPE, QK-norm, ReLU^2, value embeddings, sliding windows, logit softcap
# ---------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    window_pattern: str
    short_window: int


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def has_value_embedding(layer, n_layer):
    # Every other layer, counted so that the last layer always has one.
    return layer % 2 == (n_layer - 1) % 2


def rotate(x, cos, sin):
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.c_q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_k = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_v = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, cfg.n_head, bias=False) if has_value_embedding(layer, cfg.n_layer) else None

    def forward(self, x, ve, cos, sin, window):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:
            # Value embeddings: a per-token vector mixed into v through a learned gate in (0, 2).
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim)
        q, k = norm(rotate(q, cos, sin)), norm(rotate(k, cos, sin))
        y = attention(q, k, v, window)
        return self.c_proj(y.reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.attn = SelfAttention(cfg, layer)
        self.mlp = MLP(cfg)

    def forward(self, x, ve, cos, sin, window):
        x = x + self.attn(norm(x), ve, cos, sin, window)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(cfg.vocab_size, cfg.n_embd)
            for i in range(cfg.n_layer) if has_value_embedding(i, cfg.n_layer)
        })
        # Learned per-layer mix of the running residual and the first layer's input.
        self.resid_lambdas = nn.Parameter(torch.ones(cfg.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(cfg.n_layer))
        pattern = cfg.window_pattern.upper()
        self.windows = [cfg.short_window if pattern[i % len(pattern)] == "S" else cfg.sequence_len
                        for i in range(cfg.n_layer)]
        self.windows[-1] = cfg.sequence_len
        head_dim = cfg.n_embd // cfg.n_head
        inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(cfg.sequence_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)

    @torch.no_grad()
    def init_weights(self):
        bound = 3 ** 0.5 * self.cfg.n_embd ** -0.5  # uniform with std 1/sqrt(width)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for emb in self.value_embeds.values():
            nn.init.uniform_(emb.weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def forward(self, idx, targets=None, reduction="mean"):
        T = idx.size(1)
        cos, sin = self.cos[:, :T].to(self.wte.weight.dtype), self.sin[:, :T].to(self.wte.weight.dtype)
        x = norm(self.wte(idx))
        x0 = x
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, self.windows[i])
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)

    def flops_per_token(self):
        """6 FLOPs per weight used in a matmul, plus attention's 12 * heads * head_dim per key
        in view; upstream's convention, so MFU figures compare."""
        cfg = self.cfg
        embeddings = self.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matmul_params = sum(p.numel() for p in self.parameters()) - embeddings - scalars
        attn = sum(12 * cfg.n_embd * min(w, cfg.sequence_len) for w in self.windows)
        return 6 * matmul_params + attn


# ---------------------------------------------------------------------------------------
# Optimizer: Muon for the blocks' matrices, AdamW for embeddings, head and scalars
# ---------------------------------------------------------------------------------------


def weber_bracket(velocity, previous, c_sq, dims=None):
    """W = 1 - v^2/(2c^2) + v.a/c^2, per element or averaged over `dims`. Clamped at 0 so a
    fast-moving parameter is slowed, never pushed backwards."""
    accel = velocity - previous
    v_sq, v_dot_a = velocity.square(), velocity * accel
    if dims is not None:
        v_sq, v_dot_a = v_sq.mean(dim=dims, keepdim=True), v_dot_a.mean(dim=dims, keepdim=True)
    return (1 - v_sq / (2 * c_sq) + v_dot_a / c_sq).clamp_min(0)


def orthogonalize(g, steps=5):
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (Muon's core), on a
    stack of matrices. The quintic's coefficients are Keller Jordan's."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return (x.mT if tall else x).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two update rules chosen per group by group['kind']. Muon groups hold
    matrices of one shape, stacked so a whole group is orthogonalized in one batched call."""

    def __init__(self, groups):
        super().__init__(groups, defaults={})
        for g in self.param_groups:
            g["initial_lr"] = g["lr"]

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (self._muon if group["kind"] == "muon" else self._adamw)(group)

    def _adamw(self, group):
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
            state["step"] += 1
            m, v = state["m"], state["v"]
            previous = m.clone() if WEBER_C_SQ > 0 else None
            m.lerp_(p.grad, 1 - beta1)
            v.lerp_(p.grad.square(), 1 - beta2)
            m_hat = m / (1 - beta1 ** state["step"])
            update = m_hat / ((v / (1 - beta2 ** state["step"])).sqrt() + group["eps"])
            if WEBER_C_SQ > 0:
                update = update * weber_bracket(m_hat, previous / (1 - beta1 ** state["step"]), WEBER_C_SQ)
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"])

    def _muon(self, group):
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        state = self.state[params[0]]
        grads = torch.stack([p.grad for p in params])
        if "momentum" not in state:
            state["momentum"] = torch.zeros_like(grads)
        buf = state["momentum"]
        previous = buf.clone() if WEBER_C_SQ > 0 else None
        buf.lerp_(grads, 1 - group["momentum"])
        update = orthogonalize(grads.lerp_(buf, group["momentum"]))  # Nesterov
        rows, cols = params[0].shape
        update = update * max(1.0, rows / cols) ** 0.5
        if WEBER_C_SQ > 0:
            update = update * weber_bracket(buf, previous, WEBER_C_SQ, dims=(-2, -1))
        stacked = torch.stack(params)
        stacked.mul_(1 - group["lr"] * group["weight_decay"])
        stacked.add_(update, alpha=-group["lr"])
        torch._foreach_copy_(params, list(stacked.unbind(0)))


def build_optimizer(model):
    width_scale = (model.cfg.n_embd / 768) ** -0.5  # AdamW rates were tuned at width 768
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    by_shape = {}
    for p in matrices:
        by_shape.setdefault(tuple(p.shape), []).append(p)
    groups = [
        dict(kind="adamw", params=[model.lm_head.weight], lr=UNEMBEDDING_LR * width_scale,
             betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0),
        dict(kind="adamw", params=[model.wte.weight, *[e.weight for e in model.value_embeds.values()]],
             lr=EMBEDDING_LR * width_scale, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0),
        dict(kind="adamw", params=[model.resid_lambdas], lr=SCALAR_LR * 0.01, betas=ADAM_BETAS,
             eps=1e-10, weight_decay=0.0),
        dict(kind="adamw", params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95),
             eps=1e-10, weight_decay=0.0),
    ]
    groups += [dict(kind="muon", params=ps, lr=MATRIX_LR, momentum=MUON_MOMENTUM,
                    weight_decay=WEIGHT_DECAY) for ps in by_shape.values()]
    return MuonAdamW(groups)


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1 - progress) / WARMDOWN_RATIO
    return cooldown + (1 - cooldown) * FINAL_LR_FRAC


# ---------------------------------------------------------------------------------------
# MFU: achieved FLOPs over the card's dense bf16 peak; no figure at all for unknown hardware
# ---------------------------------------------------------------------------------------

# (name fragment, dense bf16 FLOP/s), most specific first.
PEAK_BF16_FLOPS = [
    ("GH200", 989.5e12), ("H200", 989.5e12), ("H100 PCIe", 756.0e12), ("H100 NVL", 835.0e12),
    ("H100", 989.5e12), ("H800", 989.5e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362.05e12), ("L40", 181.05e12), ("RTX 6000 Ada", 364.25e12), ("RTX A6000", 154.8e12),
    ("RTX 4090", 165.2e12), ("RTX 3090", 71.0e12),
]


def peak_flops(device_name):
    for fragment, flops in PEAK_BF16_FLOPS:
        if fragment.lower() in device_name.lower():
            return flops
    return None


# ---------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------


def draw_seed():
    """$AUTORESEARCH_SEED replays a run; else SEED; else the entropy service; else urandom."""
    if os.environ.get("AUTORESEARCH_SEED"):
        return int(os.environ["AUTORESEARCH_SEED"])
    if SEED is not None:
        return SEED
    url = os.environ.get("AUTORESEARCH_ENTROPY_URL")
    if url:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = response.read(4096)
            if body:
                return int.from_bytes(hashlib.sha256(body).digest()[:8], "big") >> 1
        except Exception as e:  # noqa: BLE001 -- any failure falls back to the OS
            print(f"entropy service unavailable ({e}); using os.urandom", file=sys.stderr)
    return int.from_bytes(os.urandom(8), "big") >> 1


def build_model(seq_len, vocab_size, device=DEVICE):
    """The model this file trains, freshly initialised."""
    width = -(-DEPTH * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM  # rounded up to whole heads
    config = GPTConfig(sequence_len=seq_len, vocab_size=vocab_size, n_layer=DEPTH,
                       n_head=width // HEAD_DIM, n_embd=width, window_pattern=WINDOW_PATTERN,
                       short_window=seq_len // SHORT_WINDOW_DIVISOR)
    model = GPT(config).to(device)
    model.init_weights()
    return model


def main():
    profile = prepare.get_profile(PROFILE)
    TIME_BUDGET = prepare.time_budget(profile)
    STEP_BUDGET = prepare.step_budget()  # set: the run is so many steps, however long they take
    MAX_SEQ_LEN = profile.max_seq_len
    prepare.read_manifest(profile)  # a clear error now rather than after the model is built
    tokenizer = prepare.Tokenizer.from_directory(profile)

    seed = draw_seed()
    torch.manual_seed(seed)
    if DEVICE == "cuda":
        torch.cuda.manual_seed(seed)
        torch.set_float32_matmul_precision("high")
        device_name = torch.cuda.get_device_name()
        autocast = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16)
    else:
        import platform

        device_name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        autocast = nullcontext()
    PEAK_FLOPS = peak_flops(device_name) if DEVICE == "cuda" else None

    model = build_model(MAX_SEQ_LEN, tokenizer.get_vocab_size())
    config = model.cfg
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.flops_per_token()
    optimizer = build_optimizer(model)
    print(f"device: {device_name} | profile: {PROFILE} | attention: {ATTENTION_BACKEND} | seed: {seed}")
    print(f"model: {config} | params: {num_params / 1e6:.2f}M | FLOPs/token: {flops_per_token:.3e}")
    if ATTENTION_BACKEND == "flex":
        for window in set(model.windows):  # build block masks outside the compiled graph
            _flex_block_mask(window, MAX_SEQ_LEN, DEVICE)
    if COMPILE:
        model = torch.compile(model, dynamic=False)

    tokens_per_micro_step = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    assert TOTAL_BATCH_SIZE % tokens_per_micro_step == 0, "TOTAL_BATCH_SIZE must be a multiple of DEVICE_BATCH_SIZE * context"
    grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_micro_step
    train_loader = prepare.make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train", profile, DEVICE)
    x, y, epoch = next(train_loader)
    budget = f"{STEP_BUDGET} steps" if STEP_BUDGET else f"{TIME_BUDGET}s"
    print(f"budget: {budget} | batch: {TOTAL_BATCH_SIZE:,} tokens in {grad_accum_steps} micro-steps")

    # ---------------------------------------------------------------------------------------
    # Training loop: the budget counts only steps after the first few (compilation, warm-up)
    # ---------------------------------------------------------------------------------------

    UNCOUNTED_STEPS = 10 if COMPILE else 1
    progress_end = "\r" if sys.stdout.isatty() else "\n"  # a live line on a terminal, one per step in a log


    def sync():
        if DEVICE == "cuda":
            torch.cuda.synchronize()


    training_seconds = 0.0
    t_budget_start = None
    smooth_loss = 0.0
    step = 0
    while True:
        sync()
        t0 = time.time()
        if step == UNCOUNTED_STEPS:
            t_budget_start = t0
        for _ in range(grad_accum_steps):
            with autocast:
                loss = model(x, y)
            train_loss = loss.detach()
            (loss / grad_accum_steps).backward()
            x, y, epoch = next(train_loader)
        progress = min(step / STEP_BUDGET if STEP_BUDGET else training_seconds / TIME_BUDGET, 1.0)
        lrm = lr_multiplier(progress)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = 0.85 + (MUON_MOMENTUM - 0.85) * min(step / 300, 1.0)
                group["weight_decay"] = WEIGHT_DECAY * (1 - progress)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        loss_value = train_loss.item()
        if not math.isfinite(loss_value) or loss_value > 100:
            print(f"\nstep {step:05d}: loss is {loss_value}", flush=True)
            print("FAIL", flush=True)
            sys.exit(1)
        sync()
        dt = time.time() - t0
        if step >= UNCOUNTED_STEPS:
            training_seconds += dt

        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
        debiased = smooth_loss / (1 - 0.9 ** (step + 1))
        tok_per_sec = int(TOTAL_BATCH_SIZE / dt)
        mfu = f"{100 * flops_per_token * tok_per_sec / PEAK_FLOPS:.1f}%" if PEAK_FLOPS else "n/a"
        remaining = (max(0, STEP_BUDGET - step - 1) * dt if STEP_BUDGET
                     else max(0.0, TIME_BUDGET - training_seconds))
        print(f"step {step:05d} ({100 * progress:.1f}%) | loss: {debiased:.6f} | lrm: {lrm:.2f} | "
              f"dt: {dt * 1000:.0f}ms | tok/sec: {tok_per_sec:,} | mfu: {mfu} | epoch: {epoch} | "
              f"remaining: {remaining:.0f}s", end=progress_end, flush=True)

        if step == 0:
            # Python's GC walking millions of tensor objects causes ~500 ms stalls mid-run;
            # everything long-lived exists by now, so freeze it and switch the collector off.
            gc.collect()
            gc.freeze()
            gc.disable()
        step += 1
        if (step >= STEP_BUDGET) if STEP_BUDGET else (step > UNCOUNTED_STEPS and training_seconds >= TIME_BUDGET):
            break

    if progress_end == "\r":
        print()
    t_train_end = time.time()

    # ---------------------------------------------------------------------------------------
    # Evaluation and the summary (the run contract: `---`, then one `key: value` per line)
    # ---------------------------------------------------------------------------------------

    model.eval()
    with autocast:
        val_bpb = prepare.evaluate_bpb(model, tokenizer, DEVICE_BATCH_SIZE, profile, DEVICE)
    t_end = time.time()
    steps_counted = step - UNCOUNTED_STEPS
    mfu_percent = (100 * flops_per_token * steps_counted * TOTAL_BATCH_SIZE / training_seconds / PEAK_FLOPS
                   if PEAK_FLOPS and training_seconds > 0 else None)
    peak_vram_mb = torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else 0.0
    summary = {
        "val_bpb": f"{val_bpb:.6f}",
        "training_seconds": f"{training_seconds:.1f}",
        "total_seconds": f"{t_end - T_PROCESS_START:.1f}",
        "peak_vram_mb": f"{peak_vram_mb:.1f}",
        "mfu_percent": f"{mfu_percent:.2f}" if mfu_percent is not None else "n/a",
        "total_tokens_M": f"{step * TOTAL_BATCH_SIZE / 1e6:.1f}",
        "num_steps": str(step),
        "num_params_M": f"{num_params / 1e6:.1f}",
        "depth": str(DEPTH),
        "attention_backend": ATTENTION_BACKEND,
        "startup_seconds": f"{t_budget_start - T_PROCESS_START:.1f}",
        "eval_seconds": f"{t_end - t_train_end:.1f}",
        "seed": str(seed),
        "device_name": device_name,
        "profile": PROFILE,
        "time_budget": str(TIME_BUDGET),
        "step_budget": str(STEP_BUDGET or "none"),
    }
    print("---")
    for key, value in summary.items():
        print(f"{key + ':':<19}{value}")


if __name__ == "__main__":
    main()
