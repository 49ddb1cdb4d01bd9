//! json_call (the hand-written JSON constraint of the Qwen3 family) against llguidance (the
//! constraint engine of vLLM, SGLang and llama.cpp), on the same tools, vocabulary and calls.
//!
//! `cargo bench -p tracelab-student --bench constraints` (SGD at `../shared/sgd`, or set
//! `SGD=/path/to/sgd`). No real Qwen3 tokenizer is at hand offline, so byte-level BPE
//! vocabularies are trained on SGD's train dialogues (all but the ones the reference calls come
//! from), at two sizes; they are cached under the target directory.
//!
//! For each service (tools: its intents and `respond_to_user`), reference calls (the dialogues'
//! service calls and system turns as `respond_to_user`, in `json.dumps` layout) are forced token
//! by token through both engines, timing at every step json_call's `step` (what decoding pays:
//! scores favour the reference token), its full mask (`allowed`), llguidance's `compute_mask`,
//! and llguidance's step (mask, masked argmax, `consume_token`). Then a few decodes with random
//! scores (json_call picks) compare the two masks at every step.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    Tokenizer, TokenizerBuilder, TokenizerImpl,
};
use tracelab_core::tools::ToolSet;
use tracelab_student::chat_template::python_json;
use tracelab_student::json_call::{JsonCallState, JsonLimits, JsonSchema, TokenBytes};

/// The limits of `experiments/sgd-restaurants-qwen3.toml`.
const LIM: JsonLimits = JsonLimits {
    max_value_tokens: 48,
    max_new_tokens: 96,
};
const SERVICES: [&str; 2] = ["Restaurants_1", "Flights_1"];
const SPECIAL: [&str; 4] = ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"];
const CALLS_PER_SERVICE: usize = 50;
const RANDOM_DECODES: u64 = 5;

fn json_dumps(v: &Value) -> String {
    let mut out = String::new();
    python_json(v, None, 0, false, &mut out);
    out
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
        .expect("json")
}

/// The service's tools the way `src/formats/sgd.rs::service_to_toolset` writes them.
fn service_tools(schema: &Value, service: &str) -> ToolSet {
    let svc = schema
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service_name"] == service)
        .expect("service in schema.json");
    let slot = |name: &str| {
        let s = svc["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap();
        let mut p = json!({"type": "string", "description": s["description"]});
        let values = s["possible_values"].as_array().filter(|v| !v.is_empty());
        if let Some(v) = values.filter(|_| s["is_categorical"] == true) {
            p["enum"] = Value::Array(v.clone());
        }
        p
    };
    let mut intents: Vec<&Value> = svc["intents"].as_array().unwrap().iter().collect();
    intents.sort_by_key(|i| i["is_transactional"] == true);
    let tools: Vec<Value> = intents
        .iter()
        .map(|i| {
            let required: Vec<&str> = i["required_slots"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let mut props = Map::new();
            let optional = i["optional_slots"].as_object().unwrap().keys();
            for s in required.iter().copied().chain(optional.map(String::as_str)) {
                props.insert(s.to_string(), slot(s));
            }
            json!({"type": "function", "function": {"name": i["name"], "description": i["description"],
                "parameters": {"type": "object", "properties": props, "required": required,
                    "additionalProperties": false}}})
        })
        .collect();
    ToolSet::from_openai(&Value::Array(tools), "respond_to_user", &[], service).unwrap()
}

/// Reference calls of `service` (its service calls and the system turns of the dialogues they
/// are in), and the ids of the dialogues they come from.
fn reference_calls(files: &[PathBuf], service: &str) -> (Vec<String>, HashSet<String>) {
    let (mut calls, mut replies, mut used) = (Vec::new(), Vec::new(), HashSet::new());
    'files: for f in files {
        for d in read_json(f).as_array().unwrap() {
            if !d["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == service)
            {
                continue;
            }
            used.insert(d["dialogue_id"].as_str().unwrap().to_string());
            for t in d["turns"].as_array().unwrap() {
                if t["speaker"] != "SYSTEM" {
                    continue;
                }
                for fr in t["frames"].as_array().unwrap() {
                    if let (true, Some(sc)) = (fr["service"] == service, fr.get("service_call")) {
                        calls.push(json!({"name": sc["method"], "arguments": sc["parameters"]}));
                    }
                }
                replies.push(json!({"name": "respond_to_user",
                    "arguments": {"message": t["utterance"]}}));
            }
            if calls.len() >= CALLS_PER_SERVICE / 2 && replies.len() >= CALLS_PER_SERVICE / 2 {
                break 'files;
            }
        }
    }
    calls.truncate(CALLS_PER_SERVICE / 2);
    replies.truncate(CALLS_PER_SERVICE - calls.len());
    let all = calls.iter().chain(&replies).map(json_dumps).collect();
    (all, used)
}

/// A byte-level BPE vocabulary of at most `size` tokens trained on SGD text (utterances, every
/// service call and its results in `json.dumps` layout, of every split), without the dialogues
/// in `exclude`. Cached.
fn train_tokenizer(files: &[PathBuf], exclude: &HashSet<String>, size: usize) -> Tokenizer {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("constraints-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let cached = dir.join(format!("bpe-{size}.json"));
    if let Ok(t) = Tokenizer::from_file(&cached) {
        return t;
    }
    let corpus = dir.join("corpus.txt");
    if !corpus.exists() {
        let mut text = String::new();
        for f in files {
            for d in read_json(f).as_array().unwrap() {
                if exclude.contains(d["dialogue_id"].as_str().unwrap()) {
                    continue;
                }
                for t in d["turns"].as_array().unwrap() {
                    text.push_str(t["utterance"].as_str().unwrap());
                    text.push('\n');
                    for fr in t["frames"].as_array().unwrap() {
                        if let Some(sc) = fr.get("service_call") {
                            let call = json!({"name": sc["method"], "arguments": sc["parameters"]});
                            text.push_str(&json_dumps(&call));
                            text.push('\n');
                        }
                        if let Some(results) = fr.get("service_results") {
                            text.push_str(&json_dumps(results));
                            text.push('\n');
                        }
                    }
                }
            }
        }
        std::fs::write(&corpus, text).unwrap();
    }
    let t0 = Instant::now();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(size)
        .min_frequency(1)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(SPECIAL.iter().map(|s| AddedToken::from(*s, true)).collect())
        .build();
    let mut tok: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false).into()))
        .with_post_processor(None)
        .with_decoder(Some(ByteLevel::default().into()))
        .build()
        .unwrap();
    tok.train_from_files(&mut trainer, vec![corpus.display().to_string()])
        .unwrap();
    let tok: Tokenizer = tok.into();
    tok.save(&cached, false).unwrap();
    eprintln!(
        "trained a {}-token BPE in {:.1} s",
        tok.get_vocab_size(true),
        t0.elapsed().as_secs_f64()
    );
    tok
}

/// llguidance's view of the vocabulary: the same bytes as json_call's table; added tokens are
/// special (`\xff` + name), as toktrie spells them.
fn tok_env(tok: &Tokenizer, table: &TokenBytes, vocab: usize) -> TokEnv {
    let added = tok.get_added_tokens_decoder();
    let words: Vec<Vec<u8>> = (0..vocab as u32)
        .map(|id| match added.get(&id) {
            Some(a) => [&[0xffu8][..], a.content.as_bytes()].concat(),
            None => table.bytes(id).to_vec(),
        })
        .collect();
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    let info = TokRxInfo::new(vocab as u32, eos);
    Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)))
}

/// The request's JSON Schema for llguidance: one of the tools' calls, in `json.dumps` spacing.
/// llguidance writes an object's keys in the order of its `properties`; with `sorted` that
/// order is alphabetical, the order of SGD's service calls (and so of the student's training
/// calls); otherwise it is the tools' own (required arguments first).
fn call_schema(tools: &ToolSet, sorted: bool) -> Value {
    let any: Vec<Value> = tools
        .functions
        .iter()
        .map(|f| {
            let mut params = f.parameters.clone();
            if let (true, Some(props)) = (sorted, params["properties"].as_object_mut()) {
                props.sort_keys();
            }
            json!({"type": "object", "properties": {"name": {"const": f.name},
                "arguments": params}, "required": ["name", "arguments"],
                "additionalProperties": false})
        })
        .collect();
    json!({"anyOf": any, "x-guidance": {"item_separator": ", ", "key_separator": ": ",
        "whitespace_flexible": false}})
}

fn matcher(factory: &ParserFactory, schema: &Value, max_tokens: Option<usize>) -> Matcher {
    let mut g = TopLevelGrammar::from_json_schema(schema.clone());
    g.max_tokens = max_tokens;
    Matcher::new(factory.create_parser(g))
}

/// This thread's CPU time in µs: the machine is shared, so wall time would count other
/// processes' turns.
fn cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

fn micros(t: f64) -> f64 {
    cpu() - t
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[derive(Default)]
struct Times {
    jc_step: Vec<f64>,
    jc_mask: Vec<f64>,
    llg_mask: Vec<f64>,
    llg_step: Vec<f64>,
}

/// Where two masks differ: tokens only json_call allows, tokens only llguidance allows.
fn diff(jc: &[bool], llg: &llguidance::toktrie::SimpleVob, vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut only_jc, mut only_llg) = (Vec::new(), Vec::new());
    for id in 0..vocab as u32 {
        match (jc[id as usize], llg.is_allowed(id)) {
            (true, false) => only_jc.push(id),
            (false, true) => only_llg.push(id),
            _ => {}
        }
    }
    (only_jc, only_llg)
}

fn show(table: &TokenBytes, ids: &[u32]) -> String {
    let shown: Vec<String> = ids
        .iter()
        .take(4)
        .map(|&i| format!("{:?}", String::from_utf8_lossy(table.bytes(i))))
        .collect();
    format!("{} ({} tokens)", shown.join(" "), ids.len())
}

fn main() {
    let root = PathBuf::from(std::env::var("SGD").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/sgd").to_string()
    }));
    let dialogues = |split: &str| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(split))
            .expect("SGD split")
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with("dialogues_")
            })
            .collect();
        files.sort();
        files
    };
    let files = dialogues("train");
    let all_files: Vec<PathBuf> = ["train", "dev", "test"]
        .iter()
        .flat_map(|s| dialogues(s))
        .collect();
    let sgd_schema = read_json(&root.join("train/schema.json"));
    let mut refs = Vec::new();
    let mut held_out = HashSet::new();
    for service in SERVICES {
        let (calls, used) = reference_calls(&files, service);
        held_out.extend(used);
        refs.push((service, service_tools(&sgd_schema, service), calls));
    }
    let sizes: Vec<usize> = std::env::var("VOCABS")
        .map(|v| v.split(',').map(|s| s.parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![8_192, 151_000]);
    let mut rows = Vec::new();
    let mut setup_rows = Vec::new();
    let mut findings = Vec::new();
    for size in sizes {
        let tok = train_tokenizer(&all_files, &held_out, size);
        let vocab = tok.get_vocab_size(true);
        let t = cpu();
        let table = TokenBytes::new(&tok, vocab);
        let jc_table = micros(t);
        let t = cpu();
        let env = tok_env(&tok, &table, vocab);
        let llg_env = micros(t);
        let t = cpu();
        let mut factory = ParserFactory::new_simple(&env).unwrap();
        factory.quiet();
        let llg_factory = micros(t);
        setup_rows.push(format!(
            "| {vocab} | TokenBytes::new {:.1} ms | TokTrie+TokEnv {:.1} ms, ParserFactory {:.1} ms |",
            jc_table / 1e3,
            llg_env / 1e3,
            llg_factory / 1e3
        ));
        for (service, tools, calls) in &refs {
            let t = cpu();
            let schema = JsonSchema::new(tools).unwrap();
            let jc_schema = micros(t);
            let grammar = call_schema(tools, true);
            let schema_order = call_schema(tools, false);
            let t = cpu();
            let m = matcher(&factory, &grammar, None);
            let llg_compile = micros(t);
            assert!(!m.is_error(), "{:?}", m.get_error());
            setup_rows.push(format!(
                "| {vocab} {service} | JsonSchema::new {jc_schema:.0} µs | grammar compile {:.2} ms |",
                llg_compile / 1e3
            ));
            let mut times = Times::default();
            let (mut jc_rejects, mut llg_rejects, mut mask_diffs, mut steps) = (0, 0, 0, 0);
            let mut schema_order_rejects = 0;
            let mut scores = vec![0f32; vocab];
            let mut rejections = Vec::new();
            for text in calls {
                let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
                let mut m = matcher(&factory, &schema_order, None);
                schema_order_rejects += usize::from(m.validate_tokens(&ids).unwrap() < ids.len());
                let mut jc = JsonCallState::new();
                let mut llg = matcher(&factory, &grammar, None);
                let (mut jc_ok, mut llg_ok) = (true, true);
                for &id in &ids {
                    steps += 1;
                    let t = cpu();
                    let allowed = jc.allowed(&schema, &table, &LIM);
                    times.jc_mask.push(micros(t));
                    scores[id as usize] = 1.0;
                    let mut next = jc.clone();
                    let t = cpu();
                    let picked = next.step(&schema, &table, &scores, &LIM, None);
                    times.jc_step.push(micros(t));
                    assert_eq!(picked == Some(id), allowed[id as usize], "allowed vs step");
                    let t = cpu();
                    let mask = llg.compute_mask().unwrap();
                    times.llg_mask.push(micros(t));
                    let mut best = (f32::NEG_INFINITY, 0u32);
                    for (i, &s) in scores.iter().enumerate() {
                        if s > best.0 && mask.is_allowed(i as u32) {
                            best = (s, i as u32);
                        }
                    }
                    let llg_allows = mask.is_allowed(id);
                    if llg_allows {
                        llg.consume_token(best.1).unwrap();
                    }
                    times.llg_step.push(micros(t));
                    scores[id as usize] = 0.0;
                    let (a, b) = diff(&allowed, &mask, vocab);
                    if !a.is_empty() || !b.is_empty() {
                        mask_diffs += 1;
                    }
                    if picked != Some(id) || !llg_allows {
                        jc_ok &= picked == Some(id);
                        llg_ok &= llg_allows;
                        rejections.push(format!(
                            "{vocab} {service}: {} rejects token {:?} of {text}",
                            if !jc_ok && !llg_ok {
                                "both"
                            } else if !jc_ok {
                                "json_call"
                            } else {
                                "llguidance"
                            },
                            String::from_utf8_lossy(table.bytes(id))
                        ));
                        break;
                    }
                    jc = next;
                }
                if jc_ok && llg_ok && !jc.done() {
                    findings.push(format!(
                        "{vocab} {service}: json_call not done after {text}"
                    ));
                }
                jc_rejects += usize::from(!jc_ok);
                llg_rejects += usize::from(!llg_ok);
            }
            findings.extend(rejections.into_iter().take(3));
            findings.push(format!(
                "{vocab} {service}: with the tools' own key order llguidance rejects \
                 {schema_order_rejects} of {} calls",
                calls.len()
            ));
            let med = |v: &mut Vec<f64>| quantile(v, 0.5);
            let p99 = |v: &mut Vec<f64>| quantile(v, 0.99);
            let (jsm, jmm, lmm, lsm) = (
                med(&mut times.jc_step),
                med(&mut times.jc_mask),
                med(&mut times.llg_mask),
                med(&mut times.llg_step),
            );
            rows.push(format!(
                "| {vocab} | {service} | {} | {steps} | {jsm:.1} / {:.1} | {jmm:.1} / {:.1} | {lmm:.1} / {:.1} | {lsm:.1} / {:.1} | {:.2} | {:.2} | {jc_rejects} / {llg_rejects} | {mask_diffs} |",
                calls.len(),
                p99(&mut times.jc_step),
                p99(&mut times.jc_mask),
                p99(&mut times.llg_mask),
                p99(&mut times.llg_step),
                lmm / jmm,
                lsm / jsm,
            ));
            // Random scores: json_call picks, both masks are compared at every step.
            for seed in 0..RANDOM_DECODES {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let mut jc = JsonCallState::new();
                let mut llg = matcher(&factory, &grammar, Some(LIM.max_new_tokens));
                let mut out = Vec::new();
                let mut first_diff = None;
                let mut diff_steps = 0;
                while !jc.done() {
                    for s in scores.iter_mut() {
                        *s = rng.random();
                    }
                    let allowed = jc.allowed(&schema, &table, &LIM);
                    let mask = llg.compute_mask().unwrap();
                    let (a, b) = diff(&allowed, &mask, vocab);
                    if !a.is_empty() || !b.is_empty() {
                        diff_steps += 1;
                        first_diff.get_or_insert_with(|| {
                            format!(
                                "after {:?}: only json_call {}; only llguidance {}",
                                String::from_utf8_lossy(&out),
                                show(&table, &a),
                                show(&table, &b)
                            )
                        });
                    }
                    let Some(id) = jc.step(&schema, &table, &scores, &LIM, None) else {
                        break;
                    };
                    out.extend_from_slice(table.bytes(id));
                    if !mask.is_allowed(id) {
                        findings.push(format!(
                            "{vocab} {service} random {seed}: llguidance forbids json_call's {:?} after {:?}",
                            String::from_utf8_lossy(table.bytes(id)),
                            String::from_utf8_lossy(&out[..out.len() - table.bytes(id).len()])
                        ));
                        break;
                    }
                    llg.consume_token(id).unwrap();
                }
                findings.push(format!(
                    "{vocab} {service} random {seed}: {} tokens, masks differ at {diff_steps}; first {}",
                    jc.generated(),
                    first_diff.unwrap_or_else(|| "none".into())
                ));
            }
        }
    }
    println!("\nSetup (thread CPU time):\n");
    for r in &setup_rows {
        println!("{r}");
    }
    println!(
        "\nPer token, µs of thread CPU time, median / p99 (json_call step: what decoding pays; masks: the whole allowed set):\n"
    );
    println!("| vocab | service | calls | tokens | json_call step | json_call mask | llguidance mask | llguidance step | mask ratio llg/jc | step ratio llg/jc | rejected jc / llg | steps masks differ |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!("\nFindings:\n");
    for f in &findings {
        println!("- {f}");
    }
}
