//! The chat template's promises: a value is the same tokens in an utterance and in an argument,
//! loss falls only on call tokens after `<|call|>`, only message text and values are copy
//! sources, and windows keep the header, fit the context and cover every assistant turn once.

use serde_json::json;
use tracelab_core::conversation::{Conversation, Message, ToolCall};
use tracelab_core::job::{DecodeParams, RuleParams};
use tracelab_core::tools::{ToolSet, DEFAULT_RESPOND};
use tracelab_student::template::{ChatTemplate, Target};
use tracelab_student::tokenizer;

use crate::common::decode_call;

fn setup() -> (ChatTemplate, Vec<Message>) {
    setup_with(&[])
}

/// [`setup`] with a tokenizer that also learned `words`.
fn setup_with(words: &[&str]) -> (ChatTemplate, Vec<Message>) {
    let tools = ToolSet::from_openai(
        &json!([{"type": "function", "function": {"name": "FindRestaurants", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]),
        DEFAULT_RESPOND,
        &[],
        "t",
    )
    .unwrap();
    let mut call_args = serde_json::Map::new();
    call_args.insert("city".into(), "Walnut Creek".into());
    let mut msg = serde_json::Map::new();
    msg.insert(
        "message".into(),
        "Found one in Walnut Creek at 7 pm.".into(),
    );
    let messages = vec![
        Message::User {
            content: "Food in Walnut Creek please.".into(),
        },
        Message::call(ToolCall::new("FindRestaurants", call_args)),
        Message::Tool {
            tool_call_id: String::new(),
            content: r#"[{"restaurant_name": "Chez Nous", "city": "Walnut Creek"}]"#.into(),
        },
        Message::call(ToolCall::new(DEFAULT_RESPOND, msg)),
    ];
    let texts = vec![
        " Food in Walnut Creek please.".to_string(),
        " Walnut Creek".into(),
        " city".into(),
    ];
    let texts: Vec<String> = texts
        .into_iter()
        .chain(words.iter().map(|w| format!(" {w}")))
        .collect();
    let tok = tokenizer::train_bpe(&texts, 300, 1).unwrap();
    let tpl = ChatTemplate::new(tok, &tools, 2, Some("2019-03-01")).unwrap();
    (tpl, messages)
}

fn find(hay: &[u32], needle: &[u32]) -> Vec<usize> {
    (0..=hay.len().saturating_sub(needle.len()))
        .filter(|&i| hay[i..i + needle.len()] == *needle)
        .collect()
}

#[test]
fn values_share_tokens_and_loss_is_on_calls_only() {
    let (tpl, messages) = setup();
    let r = tpl.render(&messages);
    let name = tpl.encode(" Walnut Creek");
    // In the utterance, the call argument, the tool result and the reply.
    assert_eq!(find(&r.tokens, &name).len(), 4, "{:?}", r.tokens);
    // Times are normalized in the reply text.
    assert_eq!(find(&r.tokens, &tpl.encode(" 19:00")).len(), 1);
    for (i, (&t, target)) in r.tokens.iter().zip(&r.targets).enumerate() {
        if i < r.header_len || t == tpl.sp.call || t == tpl.sp.user || t == tpl.sp.result {
            assert_eq!(*target, Target::None, "token {i}");
        }
        if tpl.is_special[t as usize] {
            assert!(!r.copyable[i], "special token {i} is a copy source");
        }
    }
    let user_end = r.segments[0].1;
    assert!(r.targets[..user_end].iter().all(|t| *t == Target::None));
    assert!(r.targets.contains(&Target::Value));
    // Result labels are context, result values are copy sources.
    let label = find(&r.tokens, &tpl.encode(" restaurant_name"));
    assert!(label.iter().all(|&i| !r.copyable[i]));
    let value = find(&r.tokens, &tpl.encode(" Chez Nous"));
    assert!(!value.is_empty() && value.iter().all(|&i| r.copyable[i]));
}

#[test]
fn windows_keep_the_header_and_cover_every_call_once() {
    let (tpl, mut messages) = setup();
    let more = messages.clone();
    messages.extend(more.clone());
    messages.extend(more);
    let r = tpl.render(&messages);
    let context = r.header_len + (r.tokens.len() - r.header_len) / 2;
    let windows = tpl.windows(&r, context);
    assert!(windows.len() >= 2);
    let header = &r.tokens[..r.header_len];
    let mut targets = 0;
    for w in &windows {
        assert!(w.tokens.len() <= context);
        assert_eq!(&w.tokens[..r.header_len], header);
        targets += w.targets.iter().filter(|t| **t != Target::None).count();
    }
    let all = r.targets.iter().filter(|t| **t != Target::None).count();
    assert_eq!(targets, all, "every call token is trained exactly once");
    let p = tpl.prompt(&messages, context, 8);
    assert!(p.tokens.len() <= context - 8);
    assert_eq!(p.tokens.last(), Some(&tpl.sp.call));
    assert_eq!(&p.tokens[..r.header_len], header);
}

#[test]
fn span_arguments_are_copied_from_the_prompt_unless_the_model_insists() {
    use std::collections::BTreeMap;
    use tracelab_student::grammar::{CallState, SpanSetup};
    use tracelab_student::train::{SpanShape, ValueRules};

    let (tpl, messages) = setup();
    let prompt = tpl.prompt(&messages[..1], 128, 41);
    let spans: BTreeMap<String, BTreeMap<String, SpanShape>> = [(
        "FindRestaurants".to_string(),
        [("city".to_string(), SpanShape::Words)].into(),
    )]
    .into();
    let setup = SpanSetup::new(
        &tpl,
        &ValueRules {
            span_params: spans.clone(),
            ..Default::default()
        },
        &DecodeParams::default(),
    );
    let function = tpl.encode(" FindRestaurants");
    let city = tpl.encode(" Walnut Creek");
    let outsider = tpl.encode(" x")[0];
    let decode = |outsider_score: f32| {
        // The model wants the function; in the value it likes the city's tokens a little,
        // ending a value a bit less, and one token that is nowhere in the prompt by
        // `outsider_score`.
        let mut name_scores = vec![0f32; tpl.vocab];
        for &t in &function {
            name_scores[t as usize] = 5.0;
        }
        let mut value_scores = vec![0f32; tpl.vocab];
        for &t in &city {
            value_scores[t as usize] = 1.0;
        }
        value_scores[tpl.sp.end as usize] = 0.5;
        value_scores[outsider as usize] = outsider_score;
        let st = CallState::with_spans(setup.source(&prompt.tokens, &prompt.copyable));
        decode_call(&tpl, st, &name_scores, &value_scores)
    };
    // The outsider is likelier than any span start, but not by the margin: the span wins, and
    // it stops where the model prefers to end rather than running on into "please".
    let call = decode(2.5);
    assert_eq!(call.name, "FindRestaurants");
    assert_eq!(call.arguments["city"], "Walnut Creek");
    // Far likelier: the value is written freely.
    let call = decode(10.0);
    let value = call.arguments["city"].as_str().unwrap();
    assert!(
        !"Food in Walnut Creek please.".contains(value.trim()),
        "{value:?} should not be a span"
    );
}

#[test]
fn a_categorical_argument_takes_whole_learned_values_or_prompt_words() {
    use std::collections::BTreeMap;
    use tracelab_student::grammar::{CallState, SpanSetup};
    use tracelab_student::train::{vocab_params, ValueRules};

    let (tpl, messages) = setup_with(&["San Francisco", "Oakland", "Napa", "Dinner"]);
    let searches = |city: &dyn Fn(usize) -> String| -> Vec<Conversation> {
        (0..24)
            .map(|i| {
                let mut a = serde_json::Map::new();
                a.insert("city".into(), city(i).into());
                Conversation {
                    id: i.to_string(),
                    messages: vec![Message::call(ToolCall::new("FindRestaurants", a))],
                    meta: Default::default(),
                }
            })
            .collect()
    };
    // 24 searches in 24 cities: no vocabulary (it would only offer values to invent).
    assert!(vocab_params(
        &tpl,
        &searches(&|i| format!("Town{i}")),
        RuleParams::default().vocab_rate
    )
    .is_empty());
    // 24 searches in two cities: a categorical argument, most frequent value first.
    let corpus = searches(&|i| {
        if i % 3 == 0 {
            "San Francisco"
        } else {
            "Oakland"
        }
        .into()
    });
    assert_eq!(
        vocab_params(&tpl, &corpus, RuleParams::default().vocab_rate),
        BTreeMap::from([(
            "FindRestaurants".to_string(),
            BTreeMap::from([(
                "city".to_string(),
                vec!["Oakland".to_string(), "San Francisco".to_string()]
            )])
        )])
    );
    let rules = ValueRules::learn(&tpl, &corpus, &RuleParams::default());
    assert!(rules.span_params["FindRestaurants"].contains_key("city"));
    let setup = SpanSetup::new(&tpl, &rules, &DecodeParams::default());
    let decode_after = |messages: &[Message], liked: &[(&str, f32)]| {
        let prompt = tpl.prompt(messages, 128, 41);
        let mut name_scores = vec![0f32; tpl.vocab];
        for &t in &tpl.encode(" FindRestaurants") {
            name_scores[t as usize] = 5.0;
        }
        let mut value_scores = vec![0f32; tpl.vocab];
        for (text, score) in liked {
            for &t in &tpl.encode(text) {
                value_scores[t as usize] = *score;
            }
        }
        value_scores[tpl.sp.end as usize] = 0.5;
        let st = CallState::with_spans(setup.source(&prompt.tokens, &prompt.copyable));
        decode_call(&tpl, st, &name_scores, &value_scores)
    };
    // After "Food in Walnut Creek please.":
    let decode = |liked: &[(&str, f32)]| decode_after(&messages[..1], liked);
    // A learned value the conversation never says is written (a user's "SFO" for San
    // Francisco in the traces).
    let call = decode(&[(" Oakland", 1.0)]);
    assert_eq!(call.arguments["city"], "Oakland");
    // The prompt's words stay a source.
    let call = decode(&[(" Walnut Creek", 1.0)]);
    assert_eq!(call.arguments["city"], "Walnut Creek");
    // Neither a learned value nor a prompt word is begun in its middle (`plings` from
    // "Dumplings"), though the model likes those pieces (less than by the free-text margin).
    let (mid_value, mid_word) = (tpl.encode(" Oakland")[1], tpl.encode(" Food")[1]);
    let (mid_value, mid_word) = (tpl.decode(&[mid_value]), tpl.decode(&[mid_word]));
    let call = decode(&[(&mid_value, 2.5), (&mid_word, 2.5), (" Walnut Creek", 1.0)]);
    assert_eq!(call.arguments["city"], "Walnut Creek");
    // A span never takes a sentence's full stop along.
    let call = decode(&[(".", 3.0), (" please", 1.5), (" Walnut Creek", 2.0)]);
    assert_eq!(call.arguments["city"], "Walnut Creek please");

    let user = |text: &str| Message::User {
        content: text.into(),
    };
    let reply = |text: &str| {
        let mut a = serde_json::Map::new();
        a.insert("message".into(), text.into());
        Message::call(ToolCall::new(DEFAULT_RESPOND, a))
    };
    // A learned value the user said, in any case, wins over a likelier one (by less than
    // `said_bonus`); said by the assistant only, it does not.
    let liked = [(" Oakland", 3.0), (" San Francisco", 0.0)];
    let call = decode_after(&[user("Dinner in san francisco")], &liked);
    assert_eq!(call.arguments["city"], "San Francisco");
    let call = decode_after(
        &[user("Dinner"), reply("In san francisco?"), user("Yes")],
        &liked,
    );
    assert_eq!(call.arguments["city"], "Oakland");
    // Learned values all begin with a letter, so a value does not begin at a number the user
    // said (a date for a cuisine), though the model likes it.
    let call = decode_after(
        &[user("Dinner on 2019-03-08 in Napa")],
        &[("2019", 2.0), ("-03-08", 2.0), (" Napa", 1.0)],
    );
    assert_eq!(call.arguments["city"], "Napa");
}

#[test]
fn a_categorical_value_asked_for_by_its_alias_counts_as_said() {
    use std::collections::{BTreeMap, BTreeSet};
    use tracelab_student::grammar::{CallState, SpanSetup};
    use tracelab_student::train::{alias_params, vocab_params, ValueRules};

    let (tpl, _) = setup_with(&["San Francisco", "Oakland", "sf", "Dinner"]);
    let user = |text: &str| Message::User {
        content: text.into(),
    };
    // 20 searches in Oakland, said; 4 in San Francisco, asked for as "SF".
    let corpus: Vec<Conversation> = (0..24)
        .map(|i| {
            let (said, city) = if i % 6 == 0 {
                ("SF", "San Francisco")
            } else {
                ("Oakland", "Oakland")
            };
            let mut a = serde_json::Map::new();
            a.insert("city".into(), city.into());
            Conversation {
                id: i.to_string(),
                messages: vec![
                    user(&format!("Dinner in {said}, please.")),
                    Message::call(ToolCall::new("FindRestaurants", a)),
                ],
                meta: Default::default(),
            }
        })
        .collect();
    // "sf" asked for San Francisco in all 4 searches with it; "dinner" and "in" came before
    // every search, mostly Oakland's; "oakland" is a value's own word.
    let aliases = alias_params(
        &tpl,
        &corpus,
        &vocab_params(&tpl, &corpus, RuleParams::default().vocab_rate),
        &RuleParams::default(),
    );
    assert_eq!(
        aliases,
        BTreeMap::from([(
            "FindRestaurants".to_string(),
            BTreeMap::from([(
                "city".to_string(),
                BTreeMap::from([(
                    "San Francisco".to_string(),
                    BTreeSet::from(["sf".to_string()])
                )])
            )])
        )])
    );
    let rules = ValueRules::learn(&tpl, &corpus, &RuleParams::default());
    let setup = SpanSetup::new(&tpl, &rules, &DecodeParams::default());
    let decode_after = |messages: &[Message]| {
        let prompt = tpl.prompt(messages, 128, 41);
        let mut name_scores = vec![0f32; tpl.vocab];
        for &t in &tpl.encode(" FindRestaurants") {
            name_scores[t as usize] = 5.0;
        }
        let mut value_scores = vec![0f32; tpl.vocab];
        for &t in &tpl.encode(" Oakland") {
            value_scores[t as usize] = 3.0;
        }
        value_scores[tpl.sp.end as usize] = 0.5;
        let st = CallState::with_spans(setup.source(&prompt.tokens, &prompt.copyable));
        decode_call(&tpl, st, &name_scores, &value_scores)
    };
    // The alias makes the value as good as said: it wins over the likelier Oakland.
    let call = decode_after(&[user("Dinner in SF tonight")]);
    assert_eq!(call.arguments["city"], "San Francisco");
    // Without it, the model's choice stands.
    let call = decode_after(&[user("Dinner tonight")]);
    assert_eq!(call.arguments["city"], "Oakland");
}

#[test]
fn an_optional_argument_needs_evidence_in_the_users_words() {
    use tracelab_student::grammar::{CallState, SpanSetup};
    use tracelab_student::train::{evidence_params, ValueRules};

    let tools = ToolSet::from_openai(
        &json!([{"type": "function", "function": {"name": "Find", "parameters": {
            "type": "object", "properties": {
                "city": {"type": "string"},
                "price_range": {"type": "string", "enum": ["cheap", "pricey"]}},
            "required": ["city"]}}}]),
        DEFAULT_RESPOND,
        &[],
        "t",
    )
    .unwrap();
    let texts: Vec<String> = [
        "Food in Oakland",
        "Something cheap in Oakland",
        "price_range",
    ]
    .iter()
    .map(|t| format!(" {t}"))
    .collect();
    let tok = tokenizer::train_bpe(&texts, 300, 1).unwrap();
    let tpl = ChatTemplate::new(tok, &tools, 2, Some("2019-03-01")).unwrap();
    let user = |text: &str| Message::User {
        content: text.into(),
    };
    let find = |args: serde_json::Value| {
        Message::call(ToolCall::new("Find", args.as_object().unwrap().clone()))
    };
    // Training passed a price range exactly when the user named one.
    let corpus: Vec<Conversation> = (0..30)
        .map(|i| {
            let (said, call) = match i % 3 {
                0 => (
                    "Something cheap in Oakland",
                    json!({"city": "Oakland", "price_range": "cheap"}),
                ),
                1 => (
                    "A pricey place in Oakland",
                    json!({"city": "Oakland", "price_range": "pricey"}),
                ),
                _ => ("Food in Oakland", json!({"city": "Oakland"})),
            };
            Conversation {
                id: i.to_string(),
                messages: vec![user(said), find(call)],
                meta: Default::default(),
            }
        })
        .collect();
    let evidence = evidence_params(&tpl, &corpus, &RuleParams::default());
    let words = &evidence["Find"]["price_range"];
    assert!(
        words.contains("cheap") && words.contains("pricey"),
        "{words:?}"
    );
    assert!(!words.contains("oakland"), "{words:?}");
    let rules = ValueRules::learn(&tpl, &corpus, &RuleParams::default());
    let setup = SpanSetup::new(&tpl, &rules, &DecodeParams::default());
    // The model always wants a price range, first.
    let mut name_scores = vec![0f32; tpl.vocab];
    for &t in tpl
        .encode(" Find")
        .iter()
        .chain(&tpl.encode(" price_range"))
    {
        name_scores[t as usize] = 5.0;
    }
    let mut value_scores = vec![0f32; tpl.vocab];
    for &t in tpl.encode(" cheap").iter().chain(&tpl.encode(" Oakland")) {
        value_scores[t as usize] = 1.0;
    }
    let decode = |said: &str| {
        let prompt = tpl.prompt(&[user(said)], 128, 41);
        let st = CallState::with_spans(setup.source(&prompt.tokens, &prompt.copyable));
        decode_call(&tpl, st, &name_scores, &value_scores)
    };
    let call = decode("Something cheap in Oakland");
    assert_eq!(call.arguments.get("price_range"), Some(&json!("cheap")));
    let call = decode("Food in Oakland");
    assert_eq!(call.arguments.get("price_range"), None, "{call:?}");
    assert_eq!(call.arguments["city"], "Oakland");
    // An earlier call in the prompt that passed it is evidence too (the request that named the
    // price may be cut from the window).
    let earlier = [
        find(json!({"city": "Oakland", "price_range": "cheap"})),
        user("Food in Oakland"),
    ];
    let prompt = tpl.prompt(&earlier, 128, 41);
    let st = CallState::with_spans(setup.source(&prompt.tokens, &prompt.copyable));
    let call = decode_call(&tpl, st, &name_scores, &value_scores);
    assert_eq!(call.arguments.get("price_range"), Some(&json!("cheap")));
}

#[test]
fn a_span_argument_copies_values_labelled_with_its_own_key() {
    use std::collections::BTreeMap;
    use tracelab_student::grammar::{CallState, SpanSetup};
    use tracelab_student::train::{SpanShape, ValueRules};

    let s = json!({"type": "string"});
    let tools = ToolSet::from_openai(
        &json!([
            {"type": "function", "function": {"name": "Find", "parameters": {"type": "object",
                "properties": {"cuisine": s, "city": s}, "required": ["cuisine", "city"]}}},
            {"type": "function", "function": {"name": "Book", "parameters": {"type": "object",
                "properties": {"restaurant_name": s, "city": s, "time": s},
                "required": ["restaurant_name", "city"]}}}
        ]),
        DEFAULT_RESPOND,
        &[],
        "t",
    )
    .unwrap();
    let args = |v: serde_json::Value| v.as_object().unwrap().clone();
    let messages = vec![
        Message::User {
            content: "Thai food in Oakland".into(),
        },
        Message::call(ToolCall::new(
            "Find",
            args(json!({"cuisine": "Thai", "city": "Oakland"})),
        )),
        Message::Tool {
            tool_call_id: String::new(),
            content: r#"[{"restaurant_name": "Thai House", "city": "Oakland"}]"#.into(),
        },
        Message::call(ToolCall::new(
            DEFAULT_RESPOND,
            args(json!({"message": "Thai House is nice."})),
        )),
        Message::User {
            content: "Book it".into(),
        },
    ];
    let texts = vec![
        " Thai food in Oakland".to_string(),
        " Thai House".into(),
        " restaurant_name: city: cuisine:".into(),
    ];
    let tok = tokenizer::train_bpe(&texts, 300, 1).unwrap();
    let tpl = ChatTemplate::new(tok, &tools, 2, Some("2019-03-01")).unwrap();
    let spans: BTreeMap<String, BTreeMap<String, SpanShape>> = [(
        "Book".to_string(),
        [
            ("restaurant_name".to_string(), SpanShape::Words),
            ("city".to_string(), SpanShape::Words),
        ]
        .into(),
    )]
    .into();
    // Which arguments are keyed comes from training conversations: a booking's name and city
    // repeat what the prompt showed under their keys, its time is what the user changed it to.
    let corpus: Vec<Conversation> = ["Thai House", "Lupa", "Chez Nous", "Aperto", "Nopa"]
        .iter()
        .map(|name| {
            let book = |time: &str| {
                Message::call(ToolCall::new(
                    "Book",
                    args(json!({"restaurant_name": name, "city": "Oakland", "time": time})),
                ))
            };
            Conversation {
                id: name.to_string(),
                messages: vec![
                    messages[0].clone(),
                    messages[1].clone(),
                    Message::Tool {
                        tool_call_id: String::new(),
                        content: json!([{"restaurant_name": name, "city": "Oakland"}]).to_string(),
                    },
                    book("18:00"),
                    Message::User {
                        content: "Make it 19:00 instead".into(),
                    },
                    book("19:00"),
                ],
                meta: Default::default(),
            }
        })
        .collect();
    let with_time: BTreeMap<String, BTreeMap<String, SpanShape>> = [(
        "Book".to_string(),
        [
            ("restaurant_name".to_string(), SpanShape::Words),
            ("city".to_string(), SpanShape::Words),
            ("time".to_string(), SpanShape::Digits),
        ]
        .into(),
    )]
    .into();
    let keyed = tracelab_student::train::keyed_params(
        &tpl,
        &corpus,
        &with_time,
        RuleParams::default().keyed_rate,
    );
    assert_eq!(
        keyed["Book"],
        ["city".to_string(), "restaurant_name".to_string()].into()
    );
    let setup = SpanSetup::new(
        &tpl,
        &ValueRules {
            span_params: spans.clone(),
            keyed_params: keyed,
            ..Default::default()
        },
        &DecodeParams::default(),
    );
    // The model wants `Book`, then `restaurant_name`, and in the value it likes "Thai" and ending
    // right after it: without labels that is the cuisine value "Thai", a whole run (+3 to end
    // there). With labels, the cuisine is no source for a restaurant name, and the labelled
    // value "Thai House" gets the label bonus.
    let mut name_scores = vec![0f32; tpl.vocab];
    for &t in tpl
        .encode(" Book")
        .iter()
        .chain(&tpl.encode(" restaurant_name"))
    {
        name_scores[t as usize] = 5.0;
    }
    // Decodes after `messages` with the model liking each word's tokens by its score.
    let decode_liking = |messages: &[Message], liked: &[(&str, f32)]| {
        let mut value_scores = vec![0f32; tpl.vocab];
        for (word, score) in liked {
            for &t in &tpl.encode(word) {
                value_scores[t as usize] = *score;
            }
        }
        value_scores[tpl.sp.end as usize] = 0.5;
        value_scores[tpl.sp.arg as usize] = 0.5;
        let prompt = tpl.prompt(messages, 256, 41);
        let st = CallState::with_spans(setup.source(&prompt.tokens, &prompt.copyable));
        decode_call(&tpl, st, &name_scores, &value_scores)
    };
    let call = decode_liking(&messages, &[(" Thai", 1.0), (" Oakland", 0.8)]);
    assert_eq!(call.name, "Book");
    assert_eq!(call.arguments["restaurant_name"], "Thai House");
    assert_eq!(call.arguments["city"], "Oakland");

    // Where the prompt labels a restaurant name, the assistant's own words around it are no
    // source: the model likes "Nopa", which only the assistant's sentence says.
    let mut told = messages.clone();
    told[3] = Message::call(ToolCall::new(
        DEFAULT_RESPOND,
        args(json!({"message": "Nopa is full, Thai House is nice."})),
    ));
    let call = decode_liking(&told, &[(" Nopa", 4.0)]);
    assert_eq!(call.arguments["restaurant_name"], "Thai House");
}
