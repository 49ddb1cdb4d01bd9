//! Training throughput of the tiny student on a synthetic load, for `bench/train_throughput`:
//! random tokens, loss on every 4th position, copy mixing on half of those — the same load as
//! `bench/train_throughput_torch.py`. Prints one JSON line.
//!
//! `cargo run --release -p tracelab-student --example train_throughput -- layers width heads ffn
//!  vocab batch seq steps threads copy_dim device`

use std::time::Instant;

use serde_json::json;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};
use tracelab_student::model::{Tiny, TinyConfig};

fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: i64| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (layers, width, heads, ffn, vocab) =
        (num(0, 2), num(1, 128), num(2, 4), num(3, 336), num(4, 2048));
    let (batch, seq, steps, threads, copy_dim) =
        (num(5, 8), num(6, 512), num(7, 20), num(8, 2), num(9, 64));
    let dev = match a.get(10).map(String::as_str) {
        Some("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(dev);
    let cfg = TinyConfig {
        vocab,
        layers,
        width,
        heads,
        ffn,
        context: seq,
        dropout: 0.1,
        copy_dim,
    };
    let special = vec![false; vocab as usize];
    let model = Tiny::new(&vs.root(), cfg, &special, [1, 2]);
    let mut opt = nn::AdamW {
        wd: 0.1,
        ..Default::default()
    }
    .build(&vs, 3e-3)
    .unwrap();
    let tokens = Tensor::randint(vocab, [batch, seq], (Kind::Int64, dev));
    let at = Tensor::arange_start_step(0, batch * seq - 1, 4, (Kind::Int64, dev));
    let targets = tokens.reshape([-1]).index_select(0, &(&at + 1));
    let value = Tensor::arange(at.size()[0], (Kind::Int64, dev))
        .remainder(2)
        .eq(0);
    let copyable = Tensor::ones([batch, seq], (Kind::Bool, dev));
    let warmup = 3;
    let mut started = Instant::now();
    let mut loss_v = 0.0;
    for i in 0..warmup + steps {
        if i == warmup {
            if dev.is_cuda() {
                tch::Cuda::synchronize(0);
            }
            started = Instant::now();
        }
        let loss = tch::autocast(dev.is_cuda(), || {
            model.loss(&tokens, &copyable, &at, &targets, &value, true)
        });
        loss.backward();
        opt.clip_grad_norm(1.0);
        opt.step();
        opt.zero_grad();
        loss_v = loss.double_value(&[]);
    }
    if dev.is_cuda() {
        tch::Cuda::synchronize(0);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "impl": "tch",
            "tokens_per_second": ((batch * seq * steps) as f64 / secs).round(),
            "seconds": (secs * 100.0).round() / 100.0,
            "loss": (loss_v * 1e4).round() / 1e4,
            "peak_rss_mb": peak_rss_mb(),
        })
    );
}
