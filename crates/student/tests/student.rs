//! End-to-end tests of the student on a synthetic toy task (no SGD needed), sized to run in
//! seconds on 2 CPU cores: loss falls, a toy rule is learned, unseen values are copied,
//! constrained decoding is always valid, checkpoints reload exactly, training is deterministic.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use tch::Device;
use tracelab_core::conversation::{Conversation, EvalPair, Message, ToolCall};
use tracelab_core::job::{DeviceChoice, Sampling, TrainParams};
use tracelab_core::tools::{ToolSet, DEFAULT_RESPOND};
use tracelab_student::grammar::{digit_tokens, Limits};
use tracelab_student::model::{Tiny, TinyConfig};
use tracelab_student::predict::{decode_from, decode_states, prefill_batch};
use tracelab_student::prefix::PrefixCache;
use tracelab_student::sampling::Sampler;
use tracelab_student::template::{ChatTemplate, Prompt};
use tracelab_student::{corpus_texts, tokenizer, train};

const CITIES: &[&str] = &[
    "Fremont",
    "Oakland",
    "Berkeley",
    "Hayward",
    "Napa",
    "Dublin",
    "Gilroy",
    "Milpitas",
    "Campbell",
    "Sunnyvale",
    "Vallejo",
    "Petaluma",
    "Novato",
    "Alameda",
    "Danville",
    "San Jose",
    "Walnut Creek",
    "Half Moon Bay",
    "Mill Valley",
    "Santa Rosa",
    "Union City",
];

/// libtorch's seed and thread settings are global: tests that train or seed take this lock.
static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Never in training: the copy test asks for these.
const NEW_CITIES: &[&str] = &["Zanzibar", "Quixotica", "Brambleton", "Vexhall"];
const CUISINES: &[&str] = &["Mexican", "Chinese", "Indian", "Italian", "American"];

fn tools() -> ToolSet {
    ToolSet::from_openai(
        &json!([{"type": "function", "function": {"name": "FindRestaurants",
            "parameters": {"type": "object", "properties": {
                "cuisine": {"type": "string"}, "city": {"type": "string"},
                "price_range": {"type": "string", "enum": ["cheap", "moderate", "expensive"]}},
                "required": ["cuisine", "city"], "additionalProperties": false}, "x-kind": "search"}}]),
        DEFAULT_RESPOND,
        &[],
        "toy",
    )
    .unwrap()
}

fn call(name: &str, args: Value) -> Message {
    Message::call(ToolCall::new(
        name,
        args.as_object().cloned().unwrap_or_default(),
    ))
}

fn say(text: &str) -> Message {
    call(DEFAULT_RESPOND, json!({ "message": text }))
}

fn user(text: &str) -> Message {
    Message::User {
        content: text.into(),
    }
}

/// A toy conversation: the assistant searches exactly when city and cuisine are both known.
fn conversation(rng: &mut ChaCha8Rng, cities: &[&str], id: usize) -> Conversation {
    // Training cities are mostly invented names of 2–3 syllables, so that remembering values
    // does not pay and copying (of multi-token spans) does.
    const SYLLABLES: &[&str] = &[
        "mor", "ta", "vel", "ko", "rin", "dal", "sen", "bu", "lor", "ga",
    ];
    let invented;
    let city = if cities == CITIES && rng.random_bool(0.7) {
        let n = rng.random_range(2..4);
        let mut name: String = (0..n)
            .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
            .collect();
        name[..1].make_ascii_uppercase();
        invented = name;
        invented.as_str()
    } else {
        cities[rng.random_range(0..cities.len())]
    };
    let cuisine = CUISINES[rng.random_range(0..CUISINES.len())];
    let mut m = Vec::new();
    if rng.random_bool(0.5) {
        m.push(user(&format!("I want {cuisine} food.")));
        m.push(say("In which city?"));
        m.push(user(&format!("In {city} please.")));
    } else {
        m.push(user(&format!("Find me {cuisine} food in {city}.")));
    }
    m.push(call(
        "FindRestaurants",
        json!({"cuisine": cuisine, "city": city}),
    ));
    m.push(Message::Tool {
        tool_call_id: String::new(),
        content: json!([{"restaurant_name": "Golden Spoon", "city": city}]).to_string(),
    });
    m.push(say("I found Golden Spoon."));
    Conversation {
        id: format!("toy{id}"),
        messages: m,
        meta: Map::new(),
    }
}

fn corpus(seed: u64, n: usize, cities: &[&str]) -> Vec<Conversation> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|i| conversation(&mut rng, cities, i)).collect()
}

/// Every assistant turn of the conversations as an evaluation pair.
fn pairs(convs: &[Conversation]) -> Vec<EvalPair> {
    let mut out = Vec::new();
    for c in convs {
        for (i, m) in c.messages.iter().enumerate() {
            if let Some(call) = m.tool_calls().first() {
                out.push(EvalPair {
                    id: format!("{}#{i}", c.id),
                    question: c.messages[..i].to_vec(),
                    answer: call.clone(),
                });
            }
        }
    }
    out
}

fn template(convs: &[Conversation]) -> ChatTemplate {
    let tools = tools();
    let tok = tokenizer::train_bpe(&corpus_texts(convs, &tools), 400, 2).unwrap();
    ChatTemplate::new(tok, &tools, 2, Some("2019-03-01")).unwrap()
}

fn params(seed: u64, epochs: f64) -> TrainParams {
    TrainParams {
        device: DeviceChoice::Cpu,
        layers: 2,
        width: 64,
        heads: 2,
        context: 128,
        dropout: 0.0,
        copy_dim: 32,
        epochs,
        batch_tokens: 1024,
        lr: 5e-3,
        warmup_steps: 5,
        seed,
        ..TrainParams::default()
    }
}

fn decode_all(model: &Tiny, tpl: &ChatTemplate, pairs: &[EvalPair]) -> Vec<ToolCall> {
    decode_with(model, tpl, pairs, 16, true, None)
}

/// Decodes `pairs` in batches of `batch`, feeding forced tokens together or one by one; with
/// `sampling`, each pair draws its tokens with its own generator (seeded by its index).
fn decode_with(
    model: &Tiny,
    tpl: &ChatTemplate,
    pairs: &[EvalPair],
    batch: usize,
    forced_runs: bool,
    sampling: Option<(f32, f32)>,
) -> Vec<ToolCall> {
    let lim = Limits {
        max_value_tokens: 12,
        max_new_tokens: 40,
        forced_runs,
    };
    let digits = digit_tokens(tpl);
    let prompts: Vec<Prompt> = pairs
        .iter()
        .map(|p| {
            tpl.prompt(
                &p.question,
                model.cfg.context as usize,
                lim.max_new_tokens + 1,
            )
        })
        .collect();
    let mut out = Vec::new();
    for (c, chunk) in prompts.chunks(batch).enumerate() {
        let refs: Vec<&Prompt> = chunk.iter().collect();
        let mut samplers: Vec<Option<Sampler>> = match sampling {
            Some((temperature, top_p)) => (0..chunk.len())
                .map(|i| {
                    let seed = (c * batch + i) as u64;
                    Some(Sampler::new(&Sampling {
                        temperature,
                        top_p,
                        seed,
                    }))
                })
                .collect(),
            None => Vec::new(),
        };
        out.extend(tch::no_grad(|| {
            let states = decode_states(
                model,
                tpl,
                &refs,
                None,
                &mut samplers,
                &lim,
                &digits,
                None,
                Device::Cpu,
            );
            states.iter().map(|s| s.call(tpl)).collect::<Vec<_>>()
        }));
    }
    out
}

/// Decodes `pairs` one at a time (in conversation order, as an agent sends them), each prefilled
/// from the caches of the prompts before it; returns the calls and the tokens reused in all.
fn decode_prefixed(model: &Tiny, tpl: &ChatTemplate, pairs: &[EvalPair]) -> (Vec<ToolCall>, usize) {
    let lim = Limits {
        max_value_tokens: 12,
        max_new_tokens: 40,
        forced_runs: true,
    };
    let digits = digit_tokens(tpl);
    let mut prefixes = PrefixCache::new(4);
    let mut reused = 0;
    let calls = pairs
        .iter()
        .map(|p| {
            let context = model.cfg.context as usize;
            let prompt = tpl.prompt(&p.question, context, lim.room());
            tch::no_grad(|| {
                let (cache, out, from_earlier) =
                    prefixes.prefill(model, tpl, &prompt, lim.room(), Device::Cpu);
                assert!(
                    from_earlier < prompt.tokens.len(),
                    "the last token is always fed"
                );
                reused += from_earlier;
                // The distributions after a reused prefix are a fresh prefill's.
                let (_, fresh) = prefill_batch(model, tpl, &[&prompt], lim.room(), Device::Cpu);
                let diff = f64::try_from((&out.vocab - &fresh.vocab).abs().max()).unwrap();
                assert!(diff < 1e-4, "{}: log-probabilities differ by {diff}", p.id);
                let states = decode_from(
                    model,
                    tpl,
                    &[&prompt],
                    (cache, out),
                    None,
                    &mut [],
                    &lim,
                    &digits,
                    None,
                    Device::Cpu,
                );
                states[0].call(tpl)
            })
        })
        .collect();
    (calls, reused)
}

#[test]
fn learns_the_rule_and_copies_unseen_values() {
    let _guard = TORCH.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    let train_set = corpus(1, 120, CITIES);
    let tpl = template(&train_set);
    let dir = tempfile::tempdir().unwrap();
    let stats = train::train(
        &params(7, 60.0),
        &tpl,
        &train_set,
        None,
        None,
        dir.path(),
        &mut |_| {},
    )
    .unwrap();
    let curve = stats["loss_curve"].as_array().unwrap();
    let first = curve.first().unwrap()["loss"].as_f64().unwrap();
    let last = curve.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < first * 0.2, "loss {first} -> {last}");

    let (_, _vs, model) = train::load(
        dir.path(),
        &tpl.is_special,
        [tpl.sp.arg, tpl.sp.end],
        Device::Cpu,
    )
    .unwrap();
    let test = corpus(99, 24, NEW_CITIES);
    let ps = pairs(&test);
    let got = decode_all(&model, &tpl, &ps);
    // Forced tokens fed in one pass, alone or in a batch, decode what one pass per token does,
    // greedy or drawn (a draw among a single candidate takes no randomness).
    assert_eq!(decode_with(&model, &tpl, &ps, 1, true, None), got);
    assert_eq!(decode_with(&model, &tpl, &ps, 1, false, None), got);
    assert_eq!(decode_with(&model, &tpl, &ps, 16, false, None), got);
    let hot = Some((1.5, 1.0));
    let drawn = decode_with(&model, &tpl, &ps, 1, true, hot);
    assert_eq!(decode_with(&model, &tpl, &ps, 1, false, hot), drawn);
    // Prompts prefilled from their conversation's previous turn decode the same calls; every
    // pair after a conversation's first reuses more than the tool header.
    let (prefixed, reused) = decode_prefixed(&model, &tpl, &ps);
    assert_eq!(prefixed, got);
    let header = tpl.prompt(&[], model.cfg.context as usize, 41).tokens.len() - 1;
    assert!(
        reused > ps.len() * header + (ps.len() - test.len()) * 4,
        "{reused} tokens reused over {} pairs (a header is {header})",
        ps.len()
    );
    let right_fn = ps
        .iter()
        .zip(&got)
        .filter(|(p, g)| p.answer.name == g.name)
        .count();
    assert!(
        right_fn * 10 >= ps.len() * 9,
        "function right on {right_fn}/{}",
        ps.len()
    );
    let searches: Vec<_> = ps
        .iter()
        .zip(&got)
        .filter(|(p, _)| p.answer.name == "FindRestaurants")
        .collect();
    let copied = searches
        .iter()
        .filter(|(p, g)| g.arguments.get("city") == p.answer.arguments.get("city"))
        .count();
    // The copy itself is reliable; where the span ends is the weak part (a trailing "." is
    // sometimes copied along), so exact copies are held to a lower bar than started copies.
    let started = searches
        .iter()
        .filter(|(p, g)| {
            let want = p.answer.arguments["city"].as_str().unwrap_or_default();
            let got = g
                .arguments
                .get("city")
                .and_then(Value::as_str)
                .unwrap_or_default();
            !want.is_empty() && got.starts_with(want)
        })
        .count();
    let shown: Vec<_> = searches.iter().map(|(_, g)| g.arguments.clone()).collect();
    assert!(
        started * 10 >= searches.len() * 9 && copied * 2 >= searches.len(),
        "unseen city copied exactly in {copied}/{n}, started in {started}/{n}: {shown:?}",
        n = searches.len()
    );
}

#[test]
fn decoding_from_random_weights_is_always_valid() {
    let _guard = TORCH.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    let convs = corpus(3, 30, CITIES);
    let tpl = template(&convs);
    let validator = tools().validator();
    let ps = pairs(&convs[..8]);
    for seed in 0..4 {
        tch::manual_seed(seed);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let cfg = TinyConfig {
            vocab: tpl.vocab as i64,
            layers: 1,
            width: 32,
            heads: 2,
            ffn: 64,
            context: 128,
            dropout: 0.0,
            copy_dim: if seed % 2 == 0 { 16 } else { 0 },
        };
        let model = Tiny::new(&vs.root(), cfg, &tpl.is_special, [tpl.sp.arg, tpl.sp.end]);
        // Random weights are too tame to stress the grammar: scale them up.
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let noisy = &v * 40.0;
                v.copy_(&noisy);
            }
        });
        for (p, call) in ps.iter().zip(decode_all(&model, &tpl, &ps)) {
            if let Err(e) = validator.check(&call) {
                panic!("seed {seed}, pair {}: invalid call {call:?}: {e}", p.id);
            }
        }
    }
}

#[test]
fn checkpoint_reloads_to_identical_predictions_and_training_is_deterministic() {
    let _guard = TORCH.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    let convs = corpus(5, 40, CITIES);
    let tpl = template(&convs);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let sa = train::train(
        &params(11, 2.0),
        &tpl,
        &convs,
        None,
        None,
        a.path(),
        &mut |_| {},
    )
    .unwrap();
    let sb = train::train(
        &params(11, 2.0),
        &tpl,
        &convs,
        None,
        None,
        b.path(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(sa["loss_curve"], sb["loss_curve"]);
    let wa = std::fs::read(a.path().join(train::WEIGHTS_FILE)).unwrap();
    let wb = std::fs::read(b.path().join(train::WEIGHTS_FILE)).unwrap();
    assert!(wa == wb, "same seed gave different weights");

    // Reload fidelity: a model decoded in memory and after a save/load round trip.
    let ps = pairs(&convs[..6]);
    tch::manual_seed(3);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let cfg: TinyConfig = serde_json::from_value(
        serde_json::from_str::<Value>(
            &std::fs::read_to_string(a.path().join(train::CONFIG_FILE)).unwrap(),
        )
        .unwrap()["model"]
            .clone(),
    )
    .unwrap();
    let fresh = Tiny::new(
        &vs.root(),
        cfg.clone(),
        &tpl.is_special,
        [tpl.sp.arg, tpl.sp.end],
    );
    let c = tempfile::tempdir().unwrap();
    train::save(&vs, &cfg, 2, None, &Default::default(), c.path()).unwrap();
    let (_, _vc, reloaded) = train::load(
        c.path(),
        &tpl.is_special,
        [tpl.sp.arg, tpl.sp.end],
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        decode_all(&fresh, &tpl, &ps),
        decode_all(&reloaded, &tpl, &ps)
    );
}
