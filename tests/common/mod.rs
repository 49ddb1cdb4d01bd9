//! Test helpers: small JSONL projects, files under a cache, SGD dialogues and schemas through
//! `tracelab::formats::sgd`, and simple emulations
//! of the study's scenario corruptions (the data helper's corrupt step is the real one).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use tracelab::conversation::{Conversation, Message, ToolCall};
use tracelab::formats::sgd;
use tracelab::tools::{ToolSet, DEFAULT_RESPOND};

/// `$TRACELAB_SGD` or `<repo>/../shared/sgd`, if it exists.
pub fn sgd_dir() -> Option<PathBuf> {
    let p = std::env::var_os("TRACELAB_SGD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/sgd"));
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("SKIP: SGD not found at {} (set TRACELAB_SGD)", p.display());
        None
    }
}

/// Single-service dialogues of `service` from `splits`, through the data helper's SGD reader.
pub fn load(service: &str, splits: &[&str]) -> Vec<Conversation> {
    let sel = sgd::Selection {
        service: service.into(),
        splits: splits.iter().map(|s| s.to_string()).collect(),
        single_domain: true,
    };
    sgd::read_dialogues(&sgd_dir().expect("checked by caller"), &sel).unwrap()
}

/// The tool schema of `service`, converted by the data helper's schema reader.
pub fn tools(service: &str) -> ToolSet {
    let s = sgd::find_service_schema(&sgd_dir().expect("checked by caller"), service).unwrap();
    sgd::service_to_toolset(&s.service, DEFAULT_RESPOND).unwrap()
}

/// Every value (≥ 4 chars, not a flag) in calls and results of `convs`.
pub fn values(convs: &[Conversation]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut add = |v: &Value| {
        let s = match v {
            Value::String(s) => s.clone(),
            o => o.to_string(),
        };
        if s.len() >= 4 && !s.eq_ignore_ascii_case("true") && !s.eq_ignore_ascii_case("false") {
            out.insert(s);
        }
    };
    for c in convs {
        for m in &c.messages {
            for call in m.tool_calls() {
                if call.name != DEFAULT_RESPOND {
                    call.arguments.values().for_each(&mut add);
                }
            }
            if let Message::Tool { content, .. } = m {
                if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(content) {
                    for r in a {
                        r.as_object().unwrap().values().for_each(&mut add);
                    }
                }
            }
        }
    }
    out
}

fn rename_calls(c: &mut Conversation, f: &mut dyn FnMut(&mut ToolCall)) {
    for m in &mut c.messages {
        if let Message::Assistant { tool_calls, .. } = m {
            tool_calls.iter_mut().for_each(&mut *f);
        }
    }
}

/// Schema drift: Restaurants_2 traces with renamed functions, Restaurants_1 traces with function
/// and parameter names renamed per trace from alternatives.
pub fn drift(r1: &[Conversation], r2: &[Conversation], seed: u64) -> Vec<Conversation> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for c in r2 {
        let mut c = c.clone();
        rename_calls(&mut c, &mut |call| {
            call.name = match call.name.as_str() {
                "FindRestaurants" => "SearchDining".into(),
                "ReserveRestaurant" => "BookDining".into(),
                _ => "send_user_message".into(),
            }
        });
        out.push(c);
    }
    let fns: &[(&str, &[&str])] = &[
        (
            "FindRestaurants",
            &[
                "search_restaurants",
                "LookupEateries",
                "find_places_to_eat",
                "RestaurantSearch",
                "queryDining",
                "get_restaurants",
            ],
        ),
        (
            "ReserveRestaurant",
            &[
                "book_table",
                "MakeReservation",
                "reserve_table",
                "TableBooking",
                "createBooking",
                "book_restaurant",
            ],
        ),
        (
            DEFAULT_RESPOND,
            &[
                "reply",
                "send_message",
                "say_to_user",
                "respond",
                "message_user",
                "answer_user",
            ],
        ),
    ];
    let params: &[(&str, &[&str])] = &[
        (
            "city",
            &["location", "town", "city_name", "area", "place", "where"],
        ),
        (
            "cuisine",
            &[
                "food_type",
                "category",
                "cuisine_type",
                "kind_of_food",
                "style",
                "food",
            ],
        ),
        (
            "restaurant_name",
            &[
                "name",
                "venue",
                "place_name",
                "restaurant",
                "venue_name",
                "eatery",
            ],
        ),
        (
            "time",
            &[
                "reservation_time",
                "at",
                "hour",
                "booking_time",
                "slot",
                "when",
            ],
        ),
        (
            "date",
            &[
                "day",
                "reservation_date",
                "on",
                "booking_date",
                "when_day",
                "dt",
            ],
        ),
        (
            "party_size",
            &[
                "guests",
                "people",
                "num_people",
                "seats",
                "group_size",
                "covers",
            ],
        ),
        (
            "price_range",
            &[
                "price",
                "budget",
                "cost",
                "price_level",
                "pricing",
                "expense",
            ],
        ),
        (
            "message",
            &["text", "content", "msg", "body", "utterance", "reply"],
        ),
    ];
    for c in r1.iter().take(146) {
        let mut c = c.clone();
        let k = rng.random_range(0..6);
        rename_calls(&mut c, &mut |call| {
            if let Some((_, alts)) = fns.iter().find(|(n, _)| *n == call.name) {
                call.name = alts[k].to_string();
            }
            call.arguments = std::mem::take(&mut call.arguments)
                .into_iter()
                .map(|(a, v)| {
                    (
                        params
                            .iter()
                            .find(|(n, _)| *n == a)
                            .map(|(_, alts)| alts[k].to_string())
                            .unwrap_or(a),
                        v,
                    )
                })
                .collect();
        });
        out.push(c);
    }
    out
}

/// Trace mixing: hotel traces with functions renamed to the target's and messages shuffled,
/// plus a few target traces.
pub fn mixing(r1: &[Conversation], hotels: &[Conversation], seed: u64) -> Vec<Conversation> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for h in hotels {
        let mut c = h.clone();
        rename_calls(&mut c, &mut |call| {
            call.name = match call.name.as_str() {
                "SearchHotel" => "FindRestaurants".into(),
                "ReserveHotel" => "ReserveRestaurant".into(),
                other => other.into(),
            }
        });
        c.messages.shuffle(&mut rng);
        out.push(c);
    }
    out.extend(r1.iter().take(36).cloned());
    out
}

/// Noisy labels: half of the assistant calls corrupted (swap tool, swap params, reply instead of
/// a call; replies replaced by a service call or a hotel message), 10% of traces kept clean.
pub fn noisy(r1: &[Conversation], seed: u64) -> Vec<Conversation> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let hotel_replies = [
        "I found 3 hotels in London. The Savoy has 4 stars.",
        "Your room at Hilton Garden Inn is booked for 2 nights.",
    ];
    r1.iter()
        .map(|c| {
            let mut c = c.clone();
            if rng.random_bool(0.1) {
                return c;
            }
            let last_args: Map<String, Value> = c
                .calls()
                .find(|x| x.name != DEFAULT_RESPOND)
                .map(|x| x.arguments.clone())
                .unwrap_or_default();
            for m in &mut c.messages {
                let Message::Assistant { tool_calls, .. } = m else {
                    continue;
                };
                let call = &mut tool_calls[0];
                if !rng.random_bool(0.5) {
                    continue;
                }
                if call.name == DEFAULT_RESPOND {
                    if rng.random_bool(0.5) {
                        *call = ToolCall {
                            id: call.id.clone(),
                            name: "FindRestaurants".into(),
                            arguments: last_args.clone(),
                        };
                    } else {
                        call.arguments.insert(
                            "message".into(),
                            (*hotel_replies.choose(&mut rng).unwrap()).into(),
                        );
                    }
                } else {
                    match rng.random_range(0..3) {
                        0 => {
                            call.name = if call.name == "FindRestaurants" {
                                "ReserveRestaurant".into()
                            } else {
                                "FindRestaurants".into()
                            }
                        }
                        1 => {
                            let vals: Vec<Value> = call.arguments.values().cloned().collect();
                            let keys: Vec<String> = call.arguments.keys().cloned().collect();
                            for (i, k) in keys.iter().enumerate() {
                                call.arguments
                                    .insert(k.clone(), vals[(i + 1) % vals.len()].clone());
                            }
                        }
                        _ => {
                            let mut a = Map::new();
                            a.insert("message".into(), "Let me check that for you.".into());
                            *call = ToolCall {
                                id: call.id.clone(),
                                name: DEFAULT_RESPOND.into(),
                                arguments: a,
                            };
                        }
                    }
                }
            }
            c
        })
        .collect()
}

/// An assistant message in OpenAI format with one tool call.
pub fn assistant_call(id: &str, name: &str, args: Value) -> Value {
    json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}}]})
}

/// Lays out a small JSONL project in `root`: a `clean` scenario without operators,
/// `data/traces.jsonl` (one conversation a line), `data/tools.json`, a task file with the
/// reference date, and `experiments/<name>` holding `experiment`.
pub fn write_jsonl_project(
    root: &Path,
    traces: &[Value],
    tools: &Value,
    name: &str,
    experiment: &str,
) {
    for d in ["experiments", "scenarios", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let write = |path: &str, text: String| std::fs::write(root.join(path), text).unwrap();
    write(
        "scenarios/clean.toml",
        "description = \"as is\"\noperators = []\n".into(),
    );
    let lines: Vec<String> = traces.iter().map(Value::to_string).collect();
    write("data/traces.jsonl", lines.join("\n") + "\n");
    write("data/tools.json", tools.to_string());
    write(
        "data/task.md",
        "+++\nreference_date = \"2019-03-01\"\n+++\nA restaurant assistant.\n".into(),
    );
    write(&format!("experiments/{name}"), experiment.to_string());
}

/// A four-message conversation: the user asks for Italian food in city `i`, the assistant calls
/// `function(cuisine, city)`, gets no result and says so.
pub fn small_conversation(i: usize, function: &str) -> Value {
    json!({"messages": [
        {"role": "user", "content": format!("Italian food in city {i}?")},
        assistant_call("c0", function, json!({"cuisine": "Italian", "city": format!("c{i}")})),
        {"role": "tool", "tool_call_id": "c0", "content": "[]"},
        assistant_call("c1", "respond_to_user", json!({"message": "Nothing found."})),
    ]})
}

/// Tools for [`small_conversation`]: `FindRestaurants(cuisine, city)` and the reply function.
pub fn small_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "FindRestaurants", "x-kind": "search",
          "parameters": {"type": "object", "properties": {"cuisine": {"type": "string"},
          "city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "respond_to_user", "x-kind": "respond",
          "parameters": {"type": "object", "properties": {"message": {"type": "string"}},
          "required": ["message"]}}}
    ])
}

const CITIES: &[&str] = &[
    "San Jose",
    "Oakland",
    "Fremont",
    "Palo Alto",
    "Berkeley",
    "Napa",
];
const CUISINES: &[&str] = &["Mexican", "Italian", "Chinese", "Indian"];
const NAMES: &[&str] = &[
    "Casa Luna",
    "Il Forno",
    "Golden Wok",
    "Spice Route",
    "Blue Door",
    "Olive",
];

/// One restaurant conversation in OpenAI chat form: a search, a suggestion, a booking, thanks.
pub fn restaurant_conversation(i: usize) -> Value {
    let city = CITIES[i % CITIES.len()];
    let cuisine = CUISINES[i % CUISINES.len()];
    let name = NAMES[(i / 2) % NAMES.len()];
    let time = format!("{}:30", 17 + i % 4);
    let call = assistant_call;
    let record = json!({"restaurant_name": name, "city": city, "cuisine": cuisine, "price_range": "moderate",
                        "phone_number": "555-0100", "street_address": "1 Main Street",
                        "has_live_music": "False", "serves_alcohol": "True"});
    json!({"messages": [
        {"role": "user", "content": format!("I want {cuisine} food in {city}.")},
        call("c0", "FindRestaurants", json!({"cuisine": cuisine, "city": city})),
        {"role": "tool", "tool_call_id": "c0", "content": json!([record]).to_string()},
        call("c1", "respond_to_user", json!({"message": format!("How about {name} in {city}?")})),
        {"role": "user", "content": format!("Great, book {name} at {time}.")},
        call("c2", "ReserveRestaurant", json!({"restaurant_name": name, "city": city, "time": time})),
        {"role": "tool", "tool_call_id": "c2", "content": json!([record]).to_string()},
        call("c3", "respond_to_user", json!({"message": "Your table is booked."})),
        {"role": "user", "content": "Thanks, that's all."},
        call("c4", "respond_to_user", json!({"message": "Enjoy your meal!"})),
    ]})
}

/// Tools of [`restaurant_conversation`]: a search, a reservation and the reply function.
pub fn restaurant_tools() -> Value {
    let s = |props: &[&str], req: &[&str]| {
        let p: serde_json::Map<String, Value> = props
            .iter()
            .map(|k| (k.to_string(), json!({"type": "string"})))
            .collect();
        json!({"type": "object", "properties": p, "required": req, "additionalProperties": false})
    };
    json!([
        {"type": "function", "function": {"name": "FindRestaurants", "description": "Find restaurants", "x-kind": "search",
          "parameters": s(&["cuisine", "city", "price_range"], &["cuisine", "city"])}},
        {"type": "function", "function": {"name": "ReserveRestaurant", "description": "Reserve a table", "x-kind": "transaction",
          "parameters": s(&["restaurant_name", "city", "time", "date", "party_size"], &["restaurant_name", "city", "time"])}},
        {"type": "function", "function": {"name": "respond_to_user", "description": "Reply", "x-kind": "respond",
          "parameters": s(&["message"], &["message"])}}
    ])
}

/// Every file under `dir`, at any depth (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The server process, killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tracelab serve ARGS… --port 0 --name student` in `root` and returns it with its base
/// URL.
pub fn serve(tracelab: &Path, root: &Path, args: &[&str]) -> (Server, String) {
    let mut child = Command::new(tracelab)
        .current_dir(root)
        .arg("serve")
        .args(args)
        .args(["--port", "0", "--name", "student"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("serve printed its address before exiting")
            .unwrap();
        if let Some(at) = line.split(" at ").nth(1) {
            break at.trim().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (server, url)
}

/// One request over plain HTTP/1.1: the status and the body.
pub fn post(url: &str, body: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut s = std::net::TcpStream::connect(&host).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let json = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}
