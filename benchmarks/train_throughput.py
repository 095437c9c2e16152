"""Training throughput: tvlens's training step against a plain-PyTorch loop, same run.

The peer is a nanoGPT-style transformer written here in plain torch with the *identical*
architecture (pre-LN, split QKV with biases, adjacent-pair RoPE, GELU MLP, untied head). The
script loads tvlens's initial weights into it and checks that both give the same logits, so
the two loops do the same arithmetic; it then times interleaved rounds of each and prints
tokens/s and the ratio (target ≥ 0.9).

    python benchmarks/train_throughput.py            # default dice model
    python benchmarks/train_throughput.py --steps 40 --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from datetime import date

import torch
import torch.nn as nn
import torch.nn.functional as F

from tvlens.models import RunConfig, TaskModel
from tvlens.models.train import train_step
from tvlens.tasks import make_family


class Attention(nn.Module):
    def __init__(self, d: int, n_heads: int, n_ctx: int) -> None:
        super().__init__()
        self.h, self.dh = n_heads, d // n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        inv = 1.0 / (10000 ** (torch.arange(0, self.dh, 2).float() / self.dh))
        freqs = torch.outer(torch.arange(n_ctx).float(), inv)
        self.register_buffer("cos", freqs.cos().repeat_interleave(2, -1), persistent=False)
        self.register_buffer("sin", freqs.sin().repeat_interleave(2, -1), persistent=False)
        mask = torch.triu(torch.ones(n_ctx, n_ctx, dtype=torch.bool), 1)
        self.register_buffer("mask", mask, persistent=False)

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-2]
        rot = torch.stack((-x[..., 1::2], x[..., 0::2]), -1).flatten(-2)
        return x * self.cos[:t] + rot * self.sin[:t]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.h, self.dh).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        q, k = self.rope(q), self.rope(k)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.dh)
        att = att.masked_fill(self.mask[:t, :t], float("-inf")).softmax(-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, d: int, d_mlp: int) -> None:
        super().__init__()
        self.fc_in, self.fc_out = nn.Linear(d, d_mlp), nn.Linear(d_mlp, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, d_mlp: int, n_ctx: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.mlp = Attention(d, n_heads, n_ctx), MLP(d, d_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, d: int, n_layers: int, n_heads: int, d_mlp: int, n_ctx: int):
        super().__init__()
        self.tok_embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, n_heads, d_mlp, n_ctx) for _ in range(n_layers))
        self.ln_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab - 1, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_embed(ids)
        for block in self.layers:
            x = block(x)
        return self.head(self.ln_out(x))


def plain_step(model, opt, family, batch, lr, grad_clip) -> None:
    """The textbook loop body, written without any tvlens code."""
    for g in opt.param_groups:
        g["lr"] = lr
    logits = model(batch.inputs)
    loss = F.cross_entropy(logits[batch.target_mask], batch.targets[batch.target_mask])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per contender")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = RunConfig.for_family("dice")
    tc, mc = config.train, config.model
    family = make_family(config.family)
    ours = TaskModel(mc, family).raw
    peer = PlainGPT(family.d_vocab, mc.d_model, mc.n_layers, mc.n_heads, mc.d_mlp, family.seq_len)
    peer.load_state_dict(ours.state_dict(), strict=True)
    batches = [family.sample("train", tc.batch_size, seed=0, step=s) for s in range(args.steps)]
    with torch.no_grad():
        diff = (ours(batches[0].inputs) - peer(batches[0].inputs)).abs().max().item()
    assert diff < 1e-4, f"the peer is not the same architecture (max |Δlogit| = {diff})"
    # The peer's hand-written loss must be the family's loss, or the loops differ in work.
    with torch.no_grad():
        lp = peer(batches[0].inputs)
        mask = batches[0].target_mask
        assert torch.allclose(
            family.loss(lp, batches[0]), F.cross_entropy(lp[mask], batches[0].targets[mask])
        )

    def optimiser(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(m.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

    opt_ours, opt_peer = optimiser(ours), optimiser(peer)
    tokens = tc.batch_size * family.seq_len * args.steps
    times: dict[str, list[float]] = {"tvlens": [], "plain": []}
    for r in range(args.rounds + 1):  # round 0 warms up both
        for name in ("tvlens", "plain") if r % 2 else ("plain", "tvlens"):
            t0 = time.perf_counter()
            for b in batches:
                if name == "tvlens":
                    train_step(ours, opt_ours, family, b, lr=tc.lr, grad_clip=tc.grad_clip)
                else:
                    plain_step(peer, opt_peer, family, b, tc.lr, tc.grad_clip)
            if r:
                times[name].append(time.perf_counter() - t0)
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "model": f"{mc.n_layers}L d{mc.d_model} h{mc.n_heads}, batch {tc.batch_size} × T {family.seq_len}",
        "tokens_per_s_tvlens": round(tps["tvlens"]),
        "tokens_per_s_plain": round(tps["plain"]),
        "ratio": round(tps["tvlens"] / tps["plain"], 3),
        "max_logit_diff": diff,
    }
    print(f"model: {result['model']}   machine: {result['machine']}")
    print(f"tvlens train_step : {result['tokens_per_s_tvlens']:>9,} tokens/s")
    print(f"plain PyTorch loop: {result['tokens_per_s_plain']:>9,} tokens/s")
    print(f"ratio tvlens/plain: {result['ratio']:.3f}   (target ≥ 0.9)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
