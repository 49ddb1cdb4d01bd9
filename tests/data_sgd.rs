//! On the real SGD copy (`TRACELAB_SGD` or `<repo>/../shared/sgd`; skipped with a message when
//! absent): dialogue counts per service, conversion shape, and schema validity of every call.

use std::path::PathBuf;

use serde_json::json;
use tracelab::conversation::Message;
use tracelab::formats::sgd::{find_service_schema, read_dialogues, service_to_toolset, Selection};
use tracelab::tools::{FunctionKind, DEFAULT_RESPOND};

fn sgd_root() -> Option<PathBuf> {
    let root = std::env::var_os("TRACELAB_SGD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/sgd"));
    if root.join("train").is_dir() {
        Some(root)
    } else {
        eprintln!(
            "SKIPPED: SGD dataset not found at {} (set TRACELAB_SGD)",
            root.display()
        );
        None
    }
}

fn sel(service: &str, splits: &[&str]) -> Selection {
    Selection {
        service: service.into(),
        splits: splits.iter().map(|s| s.to_string()).collect(),
        single_domain: true,
    }
}

#[test]
fn benchmark_dialogue_counts() {
    let Some(root) = sgd_root() else { return };
    let r1 = read_dialogues(&root, &sel("Restaurants_1", &["train"])).unwrap();
    assert_eq!(r1.len(), 367);
    let r2 = read_dialogues(&root, &sel("Restaurants_2", &["dev", "test"])).unwrap();
    assert_eq!(r2.len(), 146);
    let h1 = read_dialogues(&root, &sel("Hotels_1", &["train", "dev"])).unwrap();
    assert_eq!(h1.len(), 142);
    let mut ids: Vec<&str> = r2.iter().map(|c| c.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 146, "ids are unique across splits");
}

#[test]
fn restaurants_schema_and_every_call_validates() {
    let Some(root) = sgd_root() else { return };
    let schema = find_service_schema(&root, "Restaurants_1").unwrap();
    let tools = service_to_toolset(&schema.service, DEFAULT_RESPOND).unwrap();
    let names: Vec<&str> = tools.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["FindRestaurants", "ReserveRestaurant", DEFAULT_RESPOND]
    );
    let find = tools.get("FindRestaurants").unwrap();
    assert_eq!(find.kind, FunctionKind::Search);
    assert_eq!(find.required(), ["cuisine", "city"]);
    assert_eq!(
        find.parameter_names(),
        [
            "cuisine",
            "city",
            "price_range",
            "has_live_music",
            "serves_alcohol"
        ]
    );
    assert_eq!(
        find.enum_values("price_range").unwrap(),
        ["inexpensive", "moderate", "expensive", "very expensive"]
    );
    assert!(
        find.enum_values("cuisine").is_none(),
        "cuisine is not categorical"
    );
    let reserve = tools.get("ReserveRestaurant").unwrap();
    assert_eq!(reserve.kind, FunctionKind::Transaction);
    assert_eq!(reserve.required(), ["restaurant_name", "city", "time"]);
    assert_eq!(
        reserve.parameter_names(),
        ["restaurant_name", "city", "time", "date", "party_size"]
    );
    // The tools survive the OpenAI round trip with their kinds.
    let back =
        tracelab::tools::ToolSet::from_openai(&tools.to_openai(true), "x", &[], "t").unwrap();
    assert_eq!(back, tools);

    let convs = read_dialogues(&root, &sel("Restaurants_1", &["train"])).unwrap();
    let v = tools.validator();
    let mut calls = 0;
    for c in &convs {
        for call in c.calls() {
            v.check(call).unwrap_or_else(|e| panic!("{}: {e}", c.id));
            calls += 1;
        }
        // Every service call is answered by a tool message pointing at it.
        for (i, m) in c.messages.iter().enumerate() {
            if let Some(call) = m.tool_calls().first().filter(|c| c.name != DEFAULT_RESPOND) {
                assert!(matches!(&c.messages[i + 1],
                    Message::Tool { tool_call_id, .. } if *tool_call_id == call.id));
            }
        }
    }
    assert!(calls > 3000, "{calls}");
    let first = &convs[0];
    assert_eq!(first.id, "train/1_00000");
    assert_eq!(first.meta["service"], json!("Restaurants_1"));
}
