"""PyTorch eager reference of the tiny student (same architecture as crates/student/src/model.rs:
RMSNorm, rotary, SwiGLU, causal SDPA, tied embeddings, copy head with recency bias, span-match
features, gate on the pointer's expected next token and stop head) for bench/train_throughput.

Usage: train_throughput_torch.py --layers 2 --width 128 --heads 4 --ffn 336 --vocab 2048
       --batch 8 --seq 512 --steps 20 --threads 2 [--copy-dim 64] [--device cpu]
Prints one JSON line: {"impl": "pytorch-eager", "tokens_per_second": ..., "peak_rss_mb": ...}.
Batches are random tokens with loss on every 4th position and copy mixing on half of those,
the same synthetic load the Rust side measures.
"""
import argparse, json, math, resource, time
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
for k, v in dict(layers=2, width=128, heads=4, ffn=336, vocab=2048, batch=8, seq=512, steps=20,
                 threads=2, copy_dim=64, warmup=3).items():
    p.add_argument('--' + k.replace('_', '-'), type=int, default=v)
p.add_argument('--dropout', type=float, default=0.1)
p.add_argument('--device', default='cpu')
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
dev = torch.device(a.device)


def rms(x, w):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * w


def rope(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class Block(nn.Module):
    def __init__(s):
        super().__init__()
        d = a.width
        s.n1 = nn.Parameter(torch.ones(d)); s.n2 = nn.Parameter(torch.ones(d))
        s.qkv = nn.Linear(d, 3 * d, bias=False); s.out = nn.Linear(d, d, bias=False)
        s.gu = nn.Linear(d, 2 * a.ffn, bias=False); s.down = nn.Linear(a.ffn, d, bias=False)

    def forward(s, x, cos, sin):
        b, t, d = x.shape
        h = a.heads
        q, k, v = s.qkv(rms(x, s.n1)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=a.dropout, is_causal=True)
        x = x + F.dropout(s.out(y.transpose(1, 2).reshape(b, t, d)), a.dropout)
        g, u = s.gu(rms(x, s.n2)).chunk(2, -1)
        return x + F.dropout(s.down(F.silu(g) * u), a.dropout)


class Tiny(nn.Module):
    def __init__(s):
        super().__init__()
        d = a.width
        s.emb = nn.Parameter(torch.randn(a.vocab, d) * 0.02)
        s.blocks = nn.ModuleList([Block() for _ in range(a.layers)])
        s.norm = nn.Parameter(torch.ones(d))
        s.q = nn.Linear(2 * d, a.copy_dim, bias=False); s.k = nn.Linear(2 * d, a.copy_dim, bias=False)
        s.gate = nn.Linear(2 * d, 1)
        s.recency = nn.Parameter(torch.zeros(16))
        s.span = nn.Linear(d, 2)
        s.stop = nn.Linear(2 * d, 1)
        hd = d // a.heads
        inv = torch.exp(torch.arange(0, hd, 2).float() / hd * -math.log(10000.0))
        f = torch.outer(torch.arange(a.seq).float(), inv)
        s.register_buffer('cos', f.cos()); s.register_buffer('sin', f.sin())

    def loss(s, tok, at, tgt, val):
        b, t = tok.shape
        x = F.dropout(F.embedding(tok, s.emb), a.dropout)
        for blk in s.blocks:
            x = blk(x, s.cos[:t], s.sin[:t])
        h = rms(x, s.norm)
        hs = h.reshape(b * t, -1)[at]
        lp_all = F.log_softmax((hs @ s.emb.t()).float(), -1)
        lpv = lp_all.gather(1, tgt[:, None])[:, 0]
        z1 = torch.zeros(b, 1, dtype=tok.dtype, device=tok.device)
        prev1 = torch.cat([z1, tok[:, :-1]], 1)
        prev2 = torch.cat([z1, z1, tok[:, :-2]], 1)
        emb_tok = F.embedding(tok, s.emb)
        keys = s.k(torch.cat([h, F.embedding(prev1, s.emb)], -1))
        qs = s.q(torch.cat([h, emb_tok], -1))
        idx = torch.arange(t, device=tok.device)
        dist = (idx[:, None] - idx[None, :])[None]
        bucket = torch.log2(dist.clamp(min=0).float() + 1).floor().clamp(max=15).long()
        m1 = prev1[:, None, :] == tok[:, :, None]
        m2 = m1 & (prev2[:, None, :] == prev1[:, :, None])
        w = s.span(h).float()
        sc = ((qs @ keys.transpose(1, 2)).float() / math.sqrt(a.copy_dim) + s.recency[bucket]
              + m1.float() * w[..., 0:1] + m2.float() * w[..., 1:2])
        allowed = (dist >= 0).expand(b, t, t)
        lp = sc.masked_fill(~allowed, -1e9).log_softmax(-1)
        expected = lp.exp() @ emb_tok.float()
        zst = s.stop(torch.cat([h, emb_tok], -1))[..., 0].float()
        log_stop, log_go = F.logsigmoid(zst), F.logsigmoid(-zst)
        rb = at // t
        rows = lambda x: x.reshape(b * t, -1)[at]
        lp_r, al_r = rows(lp), rows(allowed)
        hit = (tok[rb] == tgt[:, None]) & al_r
        lpc = (lp_r + log_go[rb]).masked_fill(~hit, -1e9).logsumexp(-1)
        stop_hit = rows(m1) & al_r
        lps = (lp_r + log_stop[rb]).masked_fill(~stop_hit, -1e9).logsumexp(-1)
        lps = lps + lpv - lp_all[:, 1:3].logsumexp(-1)  # closers are ids 1 and 2, as in the Rust bench
        lpc = torch.where((tgt == 1) | (tgt == 2), lps, lpc)
        z = s.gate(torch.cat([hs.float(), rows(expected)], -1))[:, 0].float()
        mixed = torch.stack([F.logsigmoid(z) + lpv, F.logsigmoid(-z) + lpc]).logsumexp(0)
        return -torch.where(val, mixed, lpv).mean()


m = Tiny().to(dev)
opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.1)
g = torch.Generator().manual_seed(0)
tok = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(dev)
at = torch.arange(0, a.batch * a.seq, 4)[:-1].to(dev)
tgt = tok.reshape(-1)[at + 1]
val = (torch.arange(at.numel()) % 2 == 0).to(dev)
for i in range(a.warmup + a.steps):
    if i == a.warmup:
        if dev.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.time()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == 'cuda'):
        loss = m.loss(tok, at, tgt, val)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step(); opt.zero_grad()
if dev.type == 'cuda':
    torch.cuda.synchronize()
dt = time.time() - t0
out = {"impl": "pytorch-eager", "tokens_per_second": round(a.batch * a.seq * a.steps / dt),
       "seconds": round(dt, 2), "loss": round(loss.item(), 4),
       "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
if dev.type == 'cuda':
    out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
print(json.dumps(out))
