//! Test helpers: read SGD dialogues of one service into conversations and build its tool schema
//! (the data helper's readers replace this once they land), plus simple scenario corruptions.
#![allow(dead_code)]

use std::path::PathBuf;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use tracelab::conversation::{Conversation, Message, ToolCall};
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

fn say(text: &str) -> Message {
    let mut a = Map::new();
    a.insert("message".into(), text.into());
    Message::call(ToolCall::new(DEFAULT_RESPOND, a))
}

/// Single-service dialogues of `service` from `splits`, as conversations.
pub fn load(service: &str, splits: &[&str]) -> Vec<Conversation> {
    let dir = sgd_dir().expect("checked by caller");
    let mut out = Vec::new();
    for split in splits {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(split))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("dialogues_")
            })
            .collect();
        files.sort();
        for f in files {
            let v: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
            for d in v.as_array().unwrap() {
                if d["services"] != json!([service]) {
                    continue;
                }
                let mut messages = Vec::new();
                for t in d["turns"].as_array().unwrap() {
                    let text = t["utterance"].as_str().unwrap();
                    if t["speaker"] == "USER" {
                        messages.push(Message::User {
                            content: text.into(),
                        });
                        continue;
                    }
                    for fr in t["frames"].as_array().unwrap() {
                        if let Some(sc) = fr.get("service_call") {
                            let args = sc["parameters"].as_object().unwrap().clone();
                            messages.push(Message::call(ToolCall::new(
                                sc["method"].as_str().unwrap(),
                                args,
                            )));
                            messages.push(Message::Tool {
                                tool_call_id: String::new(),
                                content: fr["service_results"].to_string(),
                            });
                        }
                    }
                    messages.push(say(text));
                }
                let mut c = Conversation {
                    id: d["dialogue_id"].as_str().unwrap().into(),
                    messages,
                    meta: Map::new(),
                };
                c.assign_call_ids();
                out.push(c);
            }
        }
    }
    out
}

/// The tool schema of `service` from SGD's schema.json (categorical slots as string enums).
pub fn tools(service: &str, split: &str) -> ToolSet {
    let dir = sgd_dir().expect("checked by caller");
    let v: Value =
        serde_json::from_slice(&std::fs::read(dir.join(split).join("schema.json")).unwrap())
            .unwrap();
    let s = v
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service_name"] == service)
        .unwrap();
    let slot = |n: &str| {
        s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap()
            .clone()
    };
    let mut list = Vec::new();
    for i in s["intents"].as_array().unwrap() {
        let mut props = Map::new();
        let req: Vec<String> = i["required_slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        let opt: Vec<String> = i["optional_slots"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        for n in req.iter().chain(opt.iter()) {
            let sl = slot(n);
            let mut p = json!({"type": "string", "description": sl["description"]});
            if sl["is_categorical"] == true {
                p["enum"] = sl["possible_values"].clone();
            }
            props.insert(n.clone(), p);
        }
        list.push(json!({"type": "function", "function": {
            "name": i["name"], "description": i["description"],
            "parameters": {"type": "object", "properties": props, "required": req, "additionalProperties": false},
            "x-kind": if i["is_transactional"] == true { "transaction" } else { "search" }}}));
    }
    ToolSet::from_openai(&Value::Array(list), DEFAULT_RESPOND, &[], "sgd").unwrap()
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
