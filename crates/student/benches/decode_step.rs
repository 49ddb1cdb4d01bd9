//! What one decoding pass of the default tiny student costs at batch size 1 (a served request),
//! by part: the prompt's prefill, a pass of one token with and without the copy head mixed in,
//! and a pass of several forced tokens at once (which replaces that many one-token passes).
//!
//! `cargo bench -p tracelab-student --bench decode_step` (no data needed: random weights of the
//! default architecture; timing does not depend on the weights). Median wall time of 200
//! repetitions, one libtorch thread, as the serve worker runs.

use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};
use tracelab_student::model::{Tiny, TinyConfig};

/// The default student (crates/student/MEASUREMENTS.md) with its tokenizer's 2,048 tokens.
fn config() -> TinyConfig {
    TinyConfig {
        vocab: 2048,
        layers: 2,
        width: 128,
        heads: 4,
        ffn: 352,
        context: 384,
        dropout: 0.0,
        copy_dim: 64,
    }
}

/// Median wall time of `f` in µs over `n` runs (after a warm-up).
fn median_us(n: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[n / 2]
}

fn main() {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = config();
    let mut special = vec![false; cfg.vocab as usize];
    special[..16].iter_mut().for_each(|s| *s = true);
    let model = Tiny::new(&vs.root(), cfg, &special, [3, 4]);
    let prompt_len = 300;
    let tokens = Tensor::randint_low(16, 2048, [1, prompt_len], (Kind::Int64, Device::Cpu));
    let copyable = Tensor::ones([1, prompt_len], (Kind::Bool, Device::Cpu));
    let prefill = || model.prefill(&tokens, &copyable, &[0], false, 65).0;
    tch::no_grad(|| {
        let n = 200;
        let pre = median_us(n, || {
            prefill();
        });
        println!("prefill of {prompt_len} tokens: {pre:7.0} µs");
        // One pass on a fresh cache of the prompt each time (a pass grows the cache it is given),
        // timed alone.
        let pass = |k: i64, mix: bool| {
            let next = Tensor::full([1, k], 41, (Kind::Int64, Device::Cpu));
            let mut t: Vec<f64> = (0..n)
                .map(|_| {
                    let mut cache = prefill();
                    let s = Instant::now();
                    model.step(&mut cache, &next, mix);
                    s.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            t.sort_by(f64::total_cmp);
            t[n / 2]
        };
        let one_mix = pass(1, true);
        let one = pass(1, false);
        println!("pass of 1 token, copy head mixed in: {one_mix:7.0} µs");
        println!("pass of 1 token, vocabulary only:    {one:7.0} µs");
        for k in [2, 4, 8] {
            let kp = pass(k, false);
            println!(
                "pass of {k} forced tokens:            {kp:7.0} µs ({:.2}x {k} one-token passes)",
                kp / (k as f64 * one)
            );
        }
    });
}
