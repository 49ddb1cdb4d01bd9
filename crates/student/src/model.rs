//! The tiny student: a decoder-only transformer (RMSNorm, rotary positions, SwiGLU, causal
//! attention through `scaled_dot_product_attention`) with an optional copy head.
//!
//! The copy head is a pointer over the context (a pointer-generator): at argument-value positions
//! the next-token distribution is `g·p_vocab + (1−g)·p_copy`, where `p_copy` puts the pointer's
//! attention weight on the token found at each earlier position. Keys see the hidden state at a
//! position *and the token before it*, queries the hidden state *and the current token*, so
//! "continue the span I am copying" is a single dot product (an induction head built in) and the
//! model only has to learn where a value starts and when it ends. The template renders a name as
//! the same tokens in utterances and in arguments, so copying is exact.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Kind, Tensor};

/// Architecture of the tiny student (saved as `config.json` next to the weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TinyConfig {
    /// Vocabulary size.
    pub vocab: i64,
    /// Transformer blocks.
    pub layers: i64,
    /// Model width.
    pub width: i64,
    /// Attention heads.
    pub heads: i64,
    /// SwiGLU hidden width.
    pub ffn: i64,
    /// Maximum sequence length (rotary table size).
    pub context: i64,
    /// Dropout on embeddings, attention and residual branches while training.
    pub dropout: f64,
    /// Width of the copy head's queries and keys; 0 disables the copy head.
    pub copy_dim: i64,
}

struct Block {
    attn_norm: Tensor,
    qkv: nn::Linear,
    out: nn::Linear,
    mlp_norm: Tensor,
    gate_up: nn::Linear,
    down: nn::Linear,
}

struct CopyHead {
    query: nn::Linear,
    key: nn::Linear,
    gate: nn::Linear,
    /// Learned score bias per distance bucket (log2 of the distance back): lets the pointer
    /// prefer the latest mention of a value.
    recency: Tensor,
    /// Per-query weights of the two span-continuation features (see [`Tiny::copy_scores`]).
    span: nn::Linear,
    /// Per-position stop probability: pointing at a position whose token does not continue the
    /// value means "the value ends here" (the closer), so stopping is learned where copying is.
    stop: nn::Linear,
}

/// Distance buckets of the copy head's recency bias.
const RECENCY_BUCKETS: i64 = 16;

/// Bucket of each distance (`floor(log2(d + 1))`, capped).
fn buckets(dist: &Tensor) -> Tensor {
    (dist.clamp_min(0).to_kind(Kind::Float) + 1.0)
        .log2()
        .floor()
        .clamp_max((RECENCY_BUCKETS - 1) as f64)
        .to_kind(Kind::Int64)
}

/// The model's outputs at one decoding step, for every sequence of the batch.
pub struct StepOutput {
    /// Log-probabilities from the vocabulary head, `(B, V)`.
    pub vocab: Tensor,
    /// Log-probabilities with the copy head mixed in, `(B, V)` (equal to `vocab` without one,
    /// or where no sequence needed it).
    pub mixed: Tensor,
}

/// A tensor that grows along one dimension into room allocated ahead: appending copies only the
/// new positions (growing by `cat` copied the whole cache at every pass, most of a pass's
/// memory traffic at a few hundred positions).
struct Grown {
    buf: Tensor,
    dim: i64,
    len: i64,
    /// A snapshot sharing another's buffer ([`Grown::shared`]): never appended to.
    frozen: bool,
}

impl Grown {
    /// `init`, with room for `room` more positions along `dim`.
    fn new(init: &Tensor, dim: i64, room: i64) -> Grown {
        let mut size = init.size();
        let len = size[dim as usize];
        size[dim as usize] = len + room.max(1);
        let buf = Tensor::empty(size.as_slice(), (init.kind(), init.device()));
        buf.narrow(dim, 0, len).copy_(init);
        Grown {
            buf,
            dim,
            len,
            frozen: false,
        }
    }

    /// The positions so far (a view).
    fn view(&self) -> Tensor {
        self.buf.narrow(self.dim, 0, self.len)
    }

    /// Appends `more`'s positions (making twice the room when there is too little).
    fn push(&mut self, more: &Tensor) {
        assert!(!self.frozen, "a shared snapshot is never appended to");
        let k = more.size()[self.dim as usize];
        if self.len + k > self.buf.size()[self.dim as usize] {
            *self = Grown::new(&self.view(), self.dim, self.len + k);
        }
        self.buf.narrow(self.dim, self.len, k).copy_(more);
        self.len += k;
    }

    /// The positions so far, sharing the buffer: appends to `self` only write past them, so the
    /// snapshot stays as it is.
    fn shared(&self) -> Grown {
        Grown {
            buf: self.buf.shallow_clone(),
            dim: self.dim,
            len: self.len,
            frozen: true,
        }
    }

    /// The first `n` positions in a buffer of their own, with `room` to grow.
    fn copied(&self, n: i64, room: i64) -> Grown {
        Grown::new(&self.buf.narrow(self.dim, 0, n), self.dim, room)
    }
}

/// Per-sequence decoding state: attention keys/values, what the copy head needs of each position,
/// and the tokens seen; every per-position tensor has room for the tokens a call may generate.
pub struct Cache {
    /// Keys and values of each block, `(B, H, T, hd)` each.
    kv: Vec<(Grown, Grown)>,
    copy: Option<CopyCache>,
    /// The copy head's recency bias of every distance back, `(context)`, in `f32`: read at each
    /// pass instead of bucketing every distance again.
    recency_by_distance: Option<Tensor>,
    /// `(B, T)` each.
    tokens: Grown,
    valid: Grown,
    pos: Grown,
    next_pos: Tensor,
}

/// What the copy head needs of positions, computed once, when a position enters the cache (a
/// decoding step is bound by the number of operations, not by their size).
struct CopyRows {
    /// Copy keys, `(B, T, C)`.
    keys: Tensor,
    /// May be pointed at: an ordinary token of the prompt that is not padding, `(B, T)`.
    candidate: Tensor,
    /// Log stop probabilities `(log s, log(1 − s))`, each `(B, T)` (see [`Tiny::stop_logs`]).
    log_stop: Tensor,
    log_go: Tensor,
    /// Token embeddings in `f32`, `(B, T, D)`.
    embedded: Tensor,
}

/// [`CopyRows`] of every cached position.
struct CopyCache {
    keys: Grown,
    candidate: Grown,
    log_stop: Grown,
    log_go: Grown,
    embedded: Grown,
}

impl CopyCache {
    fn new(rows: &CopyRows, room: i64) -> CopyCache {
        CopyCache {
            keys: Grown::new(&rows.keys, 1, room),
            candidate: Grown::new(&rows.candidate, 1, room),
            log_stop: Grown::new(&rows.log_stop, 1, room),
            log_go: Grown::new(&rows.log_go, 1, room),
            embedded: Grown::new(&rows.embedded, 1, room),
        }
    }

    /// Appends the positions of `more`.
    fn push(&mut self, more: &CopyRows) {
        self.keys.push(&more.keys);
        self.candidate.push(&more.candidate);
        self.log_stop.push(&more.log_stop);
        self.log_go.push(&more.log_go);
        self.embedded.push(&more.embedded);
    }

    /// Every part, transformed alike.
    fn map(&self, f: impl Fn(&Grown) -> Grown) -> CopyCache {
        CopyCache {
            keys: f(&self.keys),
            candidate: f(&self.candidate),
            log_stop: f(&self.log_stop),
            log_go: f(&self.log_go),
            embedded: f(&self.embedded),
        }
    }
}

impl Cache {
    /// Every per-position tensor, transformed alike; `next_pos` follows the last position kept.
    fn map(&self, f: impl Fn(&Grown) -> Grown) -> Cache {
        let pos = f(&self.pos);
        Cache {
            kv: (self.kv.iter()).map(|(k, v)| (f(k), f(v))).collect(),
            copy: self.copy.as_ref().map(|c| c.map(&f)),
            recency_by_distance: self.recency_by_distance.as_ref().map(Tensor::shallow_clone),
            tokens: f(&self.tokens),
            valid: f(&self.valid),
            next_pos: pos.view().select(1, pos.len - 1) + 1,
            pos,
        }
    }

    /// The cache of the first `n` positions alone (`0 < n ≤` its length), copied, with room for
    /// `room` more: what a prompt that begins with those tokens would have cached after them.
    pub fn prefix(&self, n: usize, room: usize) -> Cache {
        self.map(|g| g.copied(n as i64, room as i64))
    }

    /// The cache as it is now, sharing its tensors (feeding more tokens to this cache leaves the
    /// snapshot as it was); only [`Cache::prefix`] of it may be fed.
    pub fn snapshot(&self) -> Cache {
        self.map(Grown::shared)
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.tokens.len as usize
    }

    /// Whether nothing is cached (never, after a prefill).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tiny transformer. Build it inside a `VarStore` so it can be trained and saved.
pub struct Tiny {
    /// Its architecture.
    pub cfg: TinyConfig,
    emb: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    copy: Option<CopyHead>,
    cos: Tensor,
    sin: Tensor,
    special: Tensor,
    arg_id: i64,
    end_id: i64,
    /// `[arg_id, end_id]` on the model's device.
    closers: Tensor,
}

fn rms_norm(x: &Tensor, w: &Tensor) -> Tensor {
    let var = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    (x * (var + 1e-6).rsqrt()).to_kind(x.kind()) * w
}

fn linear(p: nn::Path, i: i64, o: i64, std: f64) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        bs_init: None,
        bias: false,
    };
    nn::linear(p, i, o, cfg)
}

/// Rotary tables `(context, dim/2)`.
fn rotary(context: i64, dim: i64, device: Device) -> (Tensor, Tensor) {
    let inv = Tensor::arange_start_step(0, dim, 2, (Kind::Float, device))
        .divide_scalar(dim as f64)
        .multiply_scalar(-(10000f64.ln()))
        .exp();
    let t = Tensor::arange(context, (Kind::Float, device));
    let f = t.outer(&inv);
    (f.cos(), f.sin())
}

/// `x (B, T)` shifted right by `n` positions (zeros in front).
fn shift(x: &Tensor, n: i64) -> Tensor {
    let (b, t) = x.size2().expect("2-d");
    let n = n.min(t);
    Tensor::cat(
        &[
            Tensor::zeros([b, n], (x.kind(), x.device())),
            x.narrow(1, 0, t - n),
        ],
        1,
    )
}

/// The rotary tables' rows at positions `pos (B, T)`, as `(cos, sin)`, each `(B, 1, T, D/2)`.
fn rotary_at(cos: &Tensor, sin: &Tensor, pos: &Tensor, kind: Kind) -> (Tensor, Tensor) {
    let (b, t) = pos.size2().expect("2-d positions");
    let flat = pos.reshape([-1]);
    let at = |table: &Tensor| {
        table
            .index_select(0, &flat)
            .reshape([b, 1, t, -1])
            .to_kind(kind)
    };
    (at(cos), at(sin))
}

/// Applies rotary positions to `x (…, B, H, T, D)` with the tables' rows `c`, `s` (`(B, 1, T,
/// D/2)`, from [`rotary_at`]).
fn rope(x: &Tensor, c: &Tensor, s: &Tensor) -> Tensor {
    let d = *x.size().last().expect("a last dimension");
    let x1 = x.narrow(-1, 0, d / 2);
    let x2 = x.narrow(-1, d / 2, d / 2);
    Tensor::cat(&[&x1 * c - &x2 * s, &x1 * s + &x2 * c], -1)
}

impl Tiny {
    /// Creates the variables under `p` (deterministic given `tch::manual_seed`). `special` marks
    /// token ids the copy head must never point at; `closers` are the ids of the two tokens that
    /// end a value (`<|arg|>`, `<|end|>`).
    pub fn new(p: &nn::Path, cfg: TinyConfig, special: &[bool], closers: [u32; 2]) -> Tiny {
        let d = cfg.width;
        let std = 0.02;
        let resid_std = 0.02 / (2.0 * cfg.layers as f64).sqrt();
        let emb = p.var(
            "emb",
            &[cfg.vocab, d],
            nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        );
        let blocks = (0..cfg.layers)
            .map(|i| {
                let b = p / format!("block{i}");
                Block {
                    attn_norm: b.var("attn_norm", &[d], nn::Init::Const(1.0)),
                    qkv: linear(&b / "qkv", d, 3 * d, std),
                    out: linear(&b / "out", d, d, resid_std),
                    mlp_norm: b.var("mlp_norm", &[d], nn::Init::Const(1.0)),
                    gate_up: linear(&b / "gate_up", d, 2 * cfg.ffn, std),
                    down: linear(&b / "down", cfg.ffn, d, resid_std),
                }
            })
            .collect();
        let norm = p.var("norm", &[d], nn::Init::Const(1.0));
        let copy = (cfg.copy_dim > 0).then(|| {
            let c = p / "copy";
            CopyHead {
                query: linear(&c / "query", 2 * d, cfg.copy_dim, std),
                key: linear(&c / "key", 2 * d, cfg.copy_dim, std),
                gate: nn::linear(&c / "gate", 2 * d, 1, Default::default()),
                recency: c.var("recency", &[RECENCY_BUCKETS], nn::Init::Const(0.0)),
                span: nn::linear(&c / "span", d, 2, Default::default()),
                stop: nn::linear(&c / "stop", 2 * d, 1, Default::default()),
            }
        });
        let (cos, sin) = rotary(cfg.context, d / cfg.heads, p.device());
        let special = Tensor::from_slice(special).to_device(p.device());
        let closers_t =
            Tensor::from_slice(&[closers[0] as i64, closers[1] as i64]).to_device(p.device());
        Tiny {
            cfg,
            emb,
            blocks,
            norm,
            copy,
            cos,
            sin,
            special,
            arg_id: closers[0] as i64,
            end_id: closers[1] as i64,
            closers: closers_t,
        }
    }

    fn embed(&self, tokens: &Tensor) -> Tensor {
        Tensor::embedding(&self.emb, tokens, -1, false, false)
    }

    /// Runs the blocks. `mask` is a boolean attention mask (true = attend); without one the
    /// attention is causal. With `cache`, keys/values are appended to it (a new cache gets room
    /// for `room` more positions).
    // `x = x + y` on purpose: tch's `+=` is an in-place add, which autograd rejects here.
    #[allow(clippy::assign_op_pattern)]
    fn hidden(
        &self,
        tokens: &Tensor,
        pos: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<(&mut Vec<(Grown, Grown)>, i64)>,
        train: bool,
    ) -> Tensor {
        let (b, t) = tokens.size2().expect("2-d tokens");
        let d = self.cfg.width;
        let h = self.cfg.heads;
        let hd = d / h;
        let p = if train { self.cfg.dropout } else { 0.0 };
        let mut x = self.embed(tokens).dropout(p, train);
        let (c, s) = rotary_at(&self.cos, &self.sin, pos, x.kind());
        for (i, blk) in self.blocks.iter().enumerate() {
            let n = rms_norm(&x, &blk.attn_norm);
            let qkv = n
                .apply(&blk.qkv)
                .reshape([b, t, 3, h, hd])
                .permute([2, 0, 3, 1, 4]);
            // Queries and keys rotated together: `(2, B, H, T, hd)`.
            let qk = rope(&qkv.narrow(0, 0, 2), &c, &s);
            let q = qk.get(0);
            let mut k = qk.get(1);
            let mut v = qkv.get(2);
            if let Some((c, room)) = cache.as_mut() {
                match c.get_mut(i) {
                    Some((pk, pv)) => {
                        pk.push(&k);
                        pv.push(&v);
                        k = pk.view();
                        v = pv.view();
                    }
                    None => c.push((Grown::new(&k, 2, *room), Grown::new(&v, 2, *room))),
                }
            }
            let y = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                mask,
                if train { p } else { 0.0 },
                mask.is_none(),
                None,
                false,
            );
            let y = y.transpose(1, 2).reshape([b, t, d]).apply(&blk.out);
            x = x + y.dropout(p, train);
            let n = rms_norm(&x, &blk.mlp_norm);
            let gu = n.apply(&blk.gate_up).chunk(2, -1);
            let m = (gu[0].silu() * &gu[1]).apply(&blk.down);
            x = x + m.dropout(p, train);
        }
        rms_norm(&x, &self.norm)
    }

    /// Copy keys `(B, T, C)` for positions holding `tokens`, each seeing the token before it.
    fn copy_keys(&self, head: &CopyHead, h: &Tensor, prev: &Tensor) -> Tensor {
        Tensor::cat(&[h, &self.embed(prev)], -1).apply(&head.key)
    }

    /// The copy head's view of positions holding `tokens (B, K)` with hidden states `h` and the
    /// tokens before them `prev`; `candidate` marks those it may point at.
    fn copy_cache(
        &self,
        head: &CopyHead,
        h: &Tensor,
        tokens: &Tensor,
        prev: &Tensor,
        candidate: Tensor,
    ) -> CopyRows {
        let (log_stop, log_go) = self.stop_logs(head, h, tokens);
        CopyRows {
            keys: self.copy_keys(head, h, prev),
            candidate,
            log_stop,
            log_go,
            embedded: self.embed(tokens).to_kind(Kind::Float),
        }
    }

    fn copy_queries(&self, head: &CopyHead, h: &Tensor, current: &Tensor) -> Tensor {
        Tensor::cat(&[h, &self.embed(current)], -1).apply(&head.query)
    }

    /// Pointer scores `(B, Tq, Tk)` of queries (hidden `h_q`, current tokens `q_tok`, the tokens
    /// before them `q_prev`) over keys (`keys`, the tokens before each key `k_prev1`, the key
    /// tokens `k_tok`), `bias` the recency bias of each pair ([`Tiny::recency_bias`]). Besides
    /// the learned dot product and recency bias, two exact-match features make span
    /// continuation trivial: the key's previous token equals the query's current token, and
    /// additionally the token before that equals the query's previous token (a bigram match),
    /// each weighted per query.
    #[allow(clippy::too_many_arguments)]
    fn copy_scores(
        &self,
        head: &CopyHead,
        h_q: &Tensor,
        q_tok: &Tensor,
        q_prev: &Tensor,
        keys: &Tensor,
        k_tok: &Tensor,
        bias: &Tensor,
    ) -> (Tensor, Tensor) {
        let queries = self.copy_queries(head, h_q, q_tok);
        let k_prev1 = shift(k_tok, 1);
        let k_prev2 = shift(k_tok, 2);
        let m1 = k_prev1.unsqueeze(1).eq_tensor(&q_tok.unsqueeze(2));
        let m2 = m1.logical_and(&k_prev2.unsqueeze(1).eq_tensor(&q_prev.unsqueeze(2)));
        let w = h_q.apply(&head.span).to_kind(Kind::Float);
        let scores = queries
            .matmul(&keys.transpose(1, 2))
            .to_kind(Kind::Float)
            .divide_scalar((self.cfg.copy_dim as f64).sqrt())
            + bias
            + m1.to_kind(Kind::Float) * w.narrow(2, 0, 1)
            + m2.to_kind(Kind::Float) * w.narrow(2, 1, 1);
        (scores, m1)
    }

    /// The copy head's learned recency bias for each distance in `dist` (query position − key
    /// position), in `f32`.
    fn recency_bias(head: &CopyHead, dist: &Tensor) -> Tensor {
        head.recency
            .index_select(0, &buckets(dist).reshape([-1]))
            .reshape(dist.size())
            .to_kind(Kind::Float)
    }

    /// Log stop probabilities `(log s, log(1 − s))`, each `(B, T)`, of every key position.
    fn stop_logs(&self, head: &CopyHead, h: &Tensor, tokens: &Tensor) -> (Tensor, Tensor) {
        let z = Tensor::cat(&[h, &self.embed(tokens)], -1)
            .apply(&head.stop)
            .squeeze_dim(-1)
            .to_kind(Kind::Float);
        (z.log_sigmoid(), (-z).log_sigmoid())
    }

    /// Training loss: mean negative log-likelihood of `targets (N)` predicted at flat positions
    /// `at (N)` (index into `B*T`); where `value (N)` is set the copy head is mixed in.
    pub fn loss(
        &self,
        tokens: &Tensor,
        copyable: &Tensor,
        at: &Tensor,
        targets: &Tensor,
        value: &Tensor,
        train: bool,
    ) -> Tensor {
        let (b, t) = tokens.size2().expect("2-d tokens");
        let dev = tokens.device();
        let pos = Tensor::arange(t, (Kind::Int64, dev))
            .unsqueeze(0)
            .expand([b, t], false);
        let h = self.hidden(tokens, &pos, None, None, train);
        let d = self.cfg.width;
        let hs = h.reshape([b * t, d]).index_select(0, at);
        let logits = hs.matmul(&self.emb.tr()).to_kind(Kind::Float);
        let lp_vocab = logits
            .log_softmax(-1, Kind::Float)
            .gather(1, &targets.unsqueeze(1), false)
            .squeeze_dim(1);
        let Some(head) = &self.copy else {
            return -lp_vocab.mean(Kind::Float);
        };
        let prev1 = shift(tokens, 1);
        let keys = self.copy_keys(head, &h, &prev1);
        let idx = Tensor::arange(t, (Kind::Int64, dev));
        let dist = (idx.unsqueeze(1) - idx.unsqueeze(0)).unsqueeze(0);
        let bias = Self::recency_bias(head, &dist);
        let (scores, m1) = self.copy_scores(head, &h, tokens, &prev1, &keys, tokens, &bias);
        let (log_stop, log_go) = self.stop_logs(head, &h, tokens);
        let cand = self
            .special
            .index_select(0, &tokens.reshape([-1]))
            .reshape([b, 1, t])
            .logical_not()
            .logical_and(&copyable.unsqueeze(1));
        let causal = dist.ge(0);
        let allowed = cand.logical_and(&causal);
        let lp_point = scores
            .masked_fill(&allowed.logical_not(), -1e9)
            .log_softmax(-1, Kind::Float);
        // What the pointer would copy next, for the gate: the expected next-token embedding.
        let expected = lp_point
            .exp()
            .matmul(&self.embed(tokens).to_kind(Kind::Float));
        let rows = |x: &Tensor| {
            let last = x.size()[2];
            x.reshape([b * t, last]).index_select(0, at)
        };
        let lp_point = rows(&lp_point);
        let row_b = at.divide_scalar_mode(t, "floor");
        let seq = tokens.index_select(0, &row_b);
        let allowed_rows = rows(&allowed.expand([b, t, t], false));
        let hit = seq
            .eq_tensor(&targets.unsqueeze(1))
            .logical_and(&allowed_rows);
        let copy_tok = (&lp_point + log_go.index_select(0, &row_b))
            .masked_fill(&hit.logical_not(), -1e9)
            .logsumexp([-1], false);
        // A closer is a stop at a position continuing the copied span, split between the two
        // closers as the vocabulary head splits them.
        let closer = targets.eq(self.arg_id).logical_or(&targets.eq(self.end_id));
        let stop_hit = rows(&m1.to_kind(Kind::Float))
            .gt(0.5)
            .logical_and(&allowed_rows);
        let lp_all = logits.log_softmax(-1, Kind::Float);
        let split = &lp_vocab - lp_all.index_select(1, &self.closers).logsumexp([-1], false);
        let copy_stop = (&lp_point + log_stop.index_select(0, &row_b))
            .masked_fill(&stop_hit.logical_not(), -1e9)
            .logsumexp([-1], false)
            + split;
        let lp_copy = copy_stop.where_self(&closer, &copy_tok);
        let gate_in = Tensor::cat(&[hs.to_kind(Kind::Float), rows(&expected)], -1);
        let z = gate_in
            .to_kind(hs.kind())
            .apply(&head.gate)
            .squeeze_dim(1)
            .to_kind(Kind::Float);
        let mixed = Tensor::stack(
            &[z.log_sigmoid() + &lp_vocab, (-&z).log_sigmoid() + lp_copy],
            0,
        )
        .logsumexp([0], false);
        let lp = mixed.where_self(value, &lp_vocab);
        -lp.mean(Kind::Float)
    }

    /// The distributions after `h_last`; the copy head is mixed in only when `mix` asks for it
    /// (a sequence of the batch is writing a value), else `mixed` is `vocab`.
    fn outputs(&self, h_last: &Tensor, cache: &Cache, last_tok: &Tensor, mix: bool) -> StepOutput {
        let logits = h_last.matmul(&self.emb.tr()).to_kind(Kind::Float);
        let vocab = logits.log_softmax(-1, Kind::Float);
        let (Some(head), Some(cc), Some(recency), true) =
            (&self.copy, &cache.copy, &cache.recency_by_distance, mix)
        else {
            return StepOutput {
                mixed: vocab.shallow_clone(),
                vocab,
            };
        };
        let tokens = cache.tokens.view();
        let q_prev = tokens.narrow(1, cache.tokens.len - 2, 1);
        // Distances back from the query, at most the context's (pad positions count from 0).
        let dist =
            (cache.next_pos.unsqueeze(1) - 1 - cache.pos.view()).clamp(0, self.cfg.context - 1);
        let bias = recency
            .index_select(0, &dist.reshape([-1]))
            .reshape([dist.size()[0], 1, -1]);
        let (scores, _) = self.copy_scores(
            head,
            &h_last.unsqueeze(1),
            &last_tok.unsqueeze(1),
            &q_prev,
            &cc.keys.view(),
            &tokens,
            &bias,
        );
        let w = scores
            .squeeze_dim(1)
            .masked_fill(&cc.candidate.view().logical_not(), -1e9)
            .softmax(-1, Kind::Float);
        let p_copy =
            Tensor::zeros_like(&vocab).scatter_add(1, &tokens, &(&w * cc.log_go.view().exp()));
        let p_stop = (&w * cc.log_stop.view().exp()).sum_dim_intlist(-1, true, Kind::Float);
        let p_vocab = vocab.exp();
        let closer_p = p_vocab.index_select(1, &self.closers);
        let split = &closer_p / (closer_p.sum_dim_intlist(-1, true, Kind::Float) + 1e-30);
        let p_copy = p_copy.index_add(1, &self.closers, &(split * p_stop));
        let expected = w.unsqueeze(1).matmul(&cc.embedded.view()).squeeze_dim(1);
        let gate_in = Tensor::cat(&[h_last.to_kind(Kind::Float), expected], -1);
        let z = gate_in
            .to_kind(h_last.kind())
            .apply(&head.gate)
            .to_kind(Kind::Float);
        let mixed = (z.sigmoid() * p_vocab + (-z).sigmoid() * p_copy + 1e-30).log();
        StepOutput { vocab, mixed }
    }

    /// Runs left-padded prompts `tokens (B, T)` (`pad[b]` leading pad tokens each; `copyable`
    /// marks what the copy head may point at) and returns the cache, with room for `room` more
    /// positions, and the distributions for the next token (`mix`: with the copy head mixed in).
    pub fn prefill(
        &self,
        tokens: &Tensor,
        copyable: &Tensor,
        pad: &[i64],
        mix: bool,
        room: usize,
    ) -> (Cache, StepOutput) {
        let room = room as i64;
        let (b, t) = tokens.size2().expect("2-d tokens");
        let dev = tokens.device();
        let pad_t = Tensor::from_slice(pad).to_device(dev).unsqueeze(1);
        let idx = Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0);
        let pos = (&idx - &pad_t).clamp_min(0);
        let valid = idx.ge_tensor(&pad_t).expand([b, t], false).contiguous();
        // Without padding the attention is plainly causal, which needs no mask (and takes
        // libtorch's fused path).
        let mask = pad.iter().any(|&p| p > 0).then(|| {
            let qi = Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(1);
            let ki = Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0);
            let causal = ki.le_tensor(&qi).unsqueeze(0);
            let diag = ki.eq_tensor(&qi).unsqueeze(0);
            // Pad queries attend to themselves only, so no row is empty (an empty row gives NaN).
            causal
                .logical_and(&valid.unsqueeze(1))
                .logical_or(&diag)
                .unsqueeze(1)
        });
        let mut kv = Vec::new();
        let h = self.hidden(tokens, &pos, mask.as_ref(), Some((&mut kv, room)), false);
        let copy = self.copy.as_ref().map(|head| {
            let ordinary = self
                .special
                .index_select(0, &tokens.reshape([-1]))
                .reshape([b, t])
                .logical_not();
            let candidate = ordinary.logical_and(&valid).logical_and(copyable);
            let rows = self.copy_cache(head, &h, tokens, &shift(tokens, 1), candidate);
            CopyCache::new(&rows, room)
        });
        let recency_by_distance = self.copy.as_ref().map(|head| {
            let every = Tensor::arange(self.cfg.context, (Kind::Int64, dev));
            Self::recency_bias(head, &every)
        });
        let cache = Cache {
            kv,
            copy,
            recency_by_distance,
            tokens: Grown::new(tokens, 1, room),
            valid: Grown::new(&valid, 1, room),
            next_pos: pos.select(1, t - 1) + 1,
            pos: Grown::new(&pos.expand([b, t], false), 1, room),
        };
        let last = h.select(1, t - 1);
        let out = self.outputs(&last, &cache, &tokens.select(1, t - 1), mix);
        (cache, out)
    }

    /// Feeds `next (B, K)`, K ≥ 1 tokens per sequence (a decoded token and, where the
    /// constraints force what follows, the forced ones: one forward pass instead of K), and
    /// returns the distributions for the token after the last (`mix`: with the copy head mixed
    /// in, see [`StepOutput::mixed`]).
    pub fn step(&self, cache: &mut Cache, next: &Tensor, mix: bool) -> StepOutput {
        // Generated tokens are not copy sources.
        let (b, k) = next.size2().expect("2-d tokens");
        let candidate = Tensor::zeros([b, k], (Kind::Bool, next.device()));
        self.feed(cache, next, candidate, mix)
    }

    /// Feeds the rest of a prompt, `more (B, K)`, after a cache of its beginning (see
    /// [`Cache::prefix`]); `copyable` marks what the copy head may point at, as in
    /// [`Tiny::prefill`]. Returns the distributions for the token after the prompt (vocabulary
    /// only, as `prefill` with `mix` false: a call starts with its function's name).
    pub fn extend_prompt(&self, cache: &mut Cache, more: &Tensor, copyable: &Tensor) -> StepOutput {
        let (b, k) = more.size2().expect("2-d tokens");
        let ordinary = self
            .special
            .index_select(0, &more.reshape([-1]))
            .reshape([b, k])
            .logical_not();
        self.feed(cache, more, ordinary.logical_and(copyable), false)
    }

    /// Feeds `next (B, K)` after the cache; `candidate` marks which of them the copy head may
    /// point at later.
    fn feed(&self, cache: &mut Cache, next: &Tensor, candidate: Tensor, mix: bool) -> StepOutput {
        let (b, k) = next.size2().expect("2-d tokens");
        let dev = next.device();
        let t = cache.tokens.len;
        let pos = cache.next_pos.unsqueeze(1) + Tensor::arange(k, (Kind::Int64, dev)).unsqueeze(0);
        let old_valid = cache.valid.view();
        cache.valid.push(&Tensor::ones([b, k], (Kind::Bool, dev)));
        // (B, 1, K, T + K): every valid cached position, and the new tokens causally.
        let mask = if k == 1 {
            cache.valid.view().unsqueeze(1).unsqueeze(1)
        } else {
            let qi = Tensor::arange(k, (Kind::Int64, dev)).unsqueeze(1);
            let ki = Tensor::arange(k, (Kind::Int64, dev)).unsqueeze(0);
            let causal = ki.le_tensor(&qi).unsqueeze(0).expand([b, k, k], false);
            let old = old_valid.unsqueeze(1).expand([b, k, t], false);
            Tensor::cat(&[old, causal], 2).unsqueeze(1)
        };
        let h = self.hidden(next, &pos, Some(&mask), Some((&mut cache.kv, k)), false);
        if let (Some(head), Some(cc)) = (&self.copy, &mut cache.copy) {
            let prev = Tensor::cat(
                &[
                    cache.tokens.view().narrow(1, t - 1, 1),
                    next.narrow(1, 0, k - 1),
                ],
                1,
            );
            cc.push(&self.copy_cache(head, &h, next, &prev, candidate));
        }
        cache.tokens.push(next);
        cache.pos.push(&pos);
        cache.next_pos = &cache.next_pos + k;
        let last = h.select(1, k - 1);
        self.outputs(&last, cache, &next.select(1, k - 1), mix)
    }

    /// Number of trainable parameters.
    pub fn parameter_count(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small random model and a prompt of `t` tokens.
    fn model_and_prompt(t: i64) -> (nn::VarStore, Tiny, Tensor, Tensor) {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = TinyConfig {
            vocab: 64,
            layers: 2,
            width: 32,
            heads: 2,
            ffn: 48,
            context: 64,
            dropout: 0.0,
            copy_dim: 16,
        };
        let mut special = vec![false; 64];
        special[..4].iter_mut().for_each(|s| *s = true);
        let model = Tiny::new(&vs.root(), cfg, &special, [2, 3]);
        let tokens = Tensor::randint_low(4, 64, [1, t], (Kind::Int64, Device::Cpu));
        let copyable = Tensor::ones([1, t], (Kind::Bool, Device::Cpu));
        (vs, model, tokens, copyable)
    }

    fn same(a: &StepOutput, b: &StepOutput) -> bool {
        a.vocab.equal(&b.vocab) && a.mixed.equal(&b.mixed)
    }

    #[test]
    fn a_cache_that_outgrows_its_room_decodes_as_one_with_room() {
        let (_vs, model, tokens, copyable) = model_and_prompt(12);
        tch::no_grad(|| {
            let (mut tight, _) = model.prefill(&tokens, &copyable, &[0], false, 1);
            let (mut roomy, _) = model.prefill(&tokens, &copyable, &[0], false, 40);
            for (i, k) in [1, 3, 1, 2].into_iter().enumerate() {
                let next = Tensor::full([1, k], 5 + i as i64, (Kind::Int64, Device::Cpu));
                let a = model.step(&mut tight, &next, true);
                let b = model.step(&mut roomy, &next, true);
                assert!(same(&a, &b), "pass {i}");
            }
            assert_eq!(tight.len(), 12 + 7);
        });
    }

    #[test]
    fn a_snapshot_stays_as_it_was_while_its_cache_and_a_prefix_of_it_are_fed() {
        let (_vs, model, tokens, copyable) = model_and_prompt(10);
        tch::no_grad(|| {
            let (mut cache, _) = model.prefill(&tokens, &copyable, &[0], false, 8);
            let snapshot = cache.snapshot();
            // The live cache goes on past the snapshot's positions...
            let next = Tensor::full([1, 2], 7, (Kind::Int64, Device::Cpu));
            model.step(&mut cache, &next, true);
            // ...and prefixes of the snapshot are fed other prompts' tokens (each prefix is a
            // buffer of its own: feeding one overwrites nothing the snapshot holds).
            let (_, fresh) = model.prefill(&tokens, &copyable, &[0], false, 8);
            for n in [6i64, 9, 6] {
                let mut other = snapshot.prefix(n as usize, 8);
                let junk = Tensor::full([1, 10 - n], 9, (Kind::Int64, Device::Cpu));
                model.extend_prompt(&mut other, &junk, &copyable.narrow(1, n, 10 - n));
                model.step(&mut other, &junk.narrow(1, 0, 1), true);
                // The snapshot still gives the prompt's own output.
                let mut again = snapshot.prefix(9, 8);
                let last = (tokens.narrow(1, 9, 1), copyable.narrow(1, 9, 1));
                let out = model.extend_prompt(&mut again, &last.0, &last.1);
                let diff = f64::try_from((&out.vocab - &fresh.vocab).abs().max()).unwrap();
                assert!(diff < 1e-5, "after a prefix of {n} was fed: {diff}");
            }
            assert!(snapshot.tokens.view().equal(&tokens));
            assert_eq!(snapshot.len(), 10);
        });
    }
}
