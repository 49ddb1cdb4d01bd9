//! The student's learned decoding rules on a house-rental schema (not restaurants): two date
//! arguments said as people say them, a count of adults, a place, and a categorical flag asked for
//! only sometimes. Nothing about the domain is given to the learner beyond its conversations.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use tracelab_core::conversation::{Conversation, Message, ToolCall};
use tracelab_core::job::RuleParams;
use tracelab_core::tools::{ToolSet, DEFAULT_RESPOND};
use tracelab_student::template::ChatTemplate;
use tracelab_student::train::{SpanShape, ValueRules};
use tracelab_student::{corpus_texts, tokenizer};

use crate::common::decode_call;

fn tools() -> ToolSet {
    let s = json!({"type": "string"});
    ToolSet::from_openai(
        &json!([
            {"type": "function", "function": {"name": "SearchHouse", "x-kind": "search",
                "parameters": {"type": "object", "properties": {
                    "where_to": s, "number_of_adults": {"type": "integer"},
                    "has_laundry_service": {"type": "string", "enum": ["True", "False"]}},
                    "required": ["where_to"], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "BookHouse", "x-kind": "transaction",
                "parameters": {"type": "object", "properties": {
                    "where_to": s, "number_of_adults": {"type": "integer"},
                    "check_in_date": s, "check_out_date": s},
                    "required": ["where_to", "number_of_adults", "check_in_date", "check_out_date"],
                    "additionalProperties": false}}}
        ]),
        DEFAULT_RESPOND,
        &["BookHouse".to_string()],
        "houses",
    )
    .unwrap()
}

fn call(name: &str, args: Value) -> Message {
    Message::call(ToolCall::new(
        name,
        args.as_object().cloned().unwrap_or_default(),
    ))
}

fn user(text: &str) -> Message {
    Message::User {
        content: text.into(),
    }
}

const MONTHS: &[&str] = &["March", "April"];

/// A stay: the user names a town (invented, so only copying works), adults, and two dates said
/// in words; laundry is asked for in a third of the conversations, and then passed.
fn conversation(rng: &mut ChaCha8Rng, id: usize) -> Conversation {
    const SYLLABLES: &[&str] = &["mor", "ta", "vel", "ko", "rin", "dal", "sen", "bu"];
    let n = rng.random_range(2..4);
    let mut town: String = (0..n)
        .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
        .collect();
    town[..1].make_ascii_uppercase();
    let adults = rng.random_range(1..6);
    let month = rng.random_range(0..MONTHS.len());
    let (d_in, d_out) = (rng.random_range(2..14), rng.random_range(15..28));
    let laundry = rng.random_bool(0.33);
    let mut search = json!({"where_to": town, "number_of_adults": adults});
    let ask = if laundry {
        search["has_laundry_service"] = json!("True");
        " with laundry"
    } else {
        ""
    };
    let iso = |d: u32| format!("2019-{:02}-{d:02}", month + 3);
    let messages = vec![
        user(&format!(
            "I need a house in {town} for {adults} people{ask}."
        )),
        call("SearchHouse", search),
        Message::Tool {
            tool_call_id: String::new(),
            content: json!([{"address": "12 Elm Road", "rating": "4.5"}]).to_string(),
        },
        call(
            DEFAULT_RESPOND,
            json!({"message": "12 Elm Road is rated 4.5. Shall I book it?"}),
        ),
        user(&format!(
            "Yes, from {m} {d_in} to {m} {d_out} please.",
            m = MONTHS[month]
        )),
        call(
            "BookHouse",
            json!({"where_to": town, "number_of_adults": adults,
                "check_in_date": iso(d_in), "check_out_date": iso(d_out)}),
        ),
    ];
    Conversation {
        id: format!("house{id}"),
        messages,
        meta: Map::new(),
    }
}

/// Sixty stays, and the template with a tokenizer trained on them; the generator goes on to draw
/// more stays of the same kind.
fn houses() -> (ChaCha8Rng, Vec<Conversation>, ChatTemplate) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let convs: Vec<Conversation> = (0..60).map(|i| conversation(&mut rng, i)).collect();
    let tools = tools();
    let tok = tokenizer::train_bpe(&corpus_texts(&convs, &tools), 400, 2).unwrap();
    let tpl = ChatTemplate::new(tok, &tools, 2, Some("2019-03-01")).unwrap();
    (rng, convs, tpl)
}

#[test]
fn rules_learned_on_house_rentals() {
    let (_, convs, tpl) = houses();
    let rules = ValueRules::learn(&tpl, &convs, &RuleParams::default());

    // Both dates are copies of what the user said, once the template has read "March 5" as
    // 2019-03-05; the invented town is a copy in both functions.
    let book = &rules.span_params["BookHouse"];
    assert_eq!(
        book.get("check_in_date"),
        Some(&SpanShape::Digits),
        "{rules:?}"
    );
    assert_eq!(
        book.get("check_out_date"),
        Some(&SpanShape::Digits),
        "{rules:?}"
    );
    assert_eq!(book.get("where_to"), Some(&SpanShape::Words), "{rules:?}");
    assert_eq!(
        rules.span_params["SearchHouse"].get("where_to"),
        Some(&SpanShape::Words)
    );
    // The optional flag is passed only when the user asks for laundry: evidence words, learned
    // from the conversations, gate it.
    let evidence = &rules.evidence_params["SearchHouse"]["has_laundry_service"];
    assert!(evidence.contains("laundry"), "{evidence:?}");
}

/// Two arguments of one kind (check-in and check-out dates): the word the users say before each
/// value ("from", "to") is learned as its cue, and a value does not start after the other
/// argument's cue, so a model that likes one date for both still gets them apart.
#[test]
fn cue_words_keep_two_arguments_of_one_kind_apart() {
    use tracelab_core::job::DecodeParams;
    use tracelab_student::grammar::{CallState, SpanSetup};

    let (mut rng, convs, tpl) = houses();
    let with = |cue_lift: f64| {
        let r = RuleParams {
            cue_lift,
            ..RuleParams::default()
        };
        ValueRules::learn(&tpl, &convs, &r)
    };
    let rules = with(5.0);
    let book = &rules.cue_params["BookHouse"];
    assert!(book["check_in_date"].contains("from"), "{book:?}");
    assert!(book["check_out_date"].contains("to"), "{book:?}");
    assert!(with(0.0).cue_params.is_empty(), "cue_lift 0 learns none");

    // A stay of the same kind: the prompt ends with the user's "from <in> to <out>".
    let stay = conversation(&mut rng, 60);
    let booked = stay.messages.last().unwrap();
    let Message::Assistant { tool_calls, .. } = booked else {
        panic!("the stay ends with the booking")
    };
    let (d_in, d_out) = (
        &tool_calls[0].arguments["check_in_date"],
        &tool_calls[0].arguments["check_out_date"],
    );
    let prompt_messages = &stay.messages[..stay.messages.len() - 1];
    let prompt = tpl.prompt(prompt_messages, 512, 64);
    // The model wants BookHouse, and in every value the check-out date's tokens.
    let mut name_scores = vec![0f32; tpl.vocab];
    for t in tpl.encode(" BookHouse") {
        name_scores[t as usize] = 5.0;
    }
    let mut value_scores = vec![0f32; tpl.vocab];
    for t in tpl.encode(&format!(" {}", d_out.as_str().unwrap())) {
        value_scores[t as usize] = 1.0;
    }
    value_scores[tpl.sp.end as usize] = 0.5;
    let decode = |rules: &ValueRules| {
        let setup = SpanSetup::new(&tpl, rules, &DecodeParams::default());
        let st = CallState::with_spans(setup.source(&prompt.tokens, &prompt.copyable));
        decode_call(&tpl, st, &name_scores, &value_scores)
    };
    let call = decode(&rules);
    assert_eq!(call.name, "BookHouse");
    assert_eq!(&call.arguments["check_in_date"], d_in, "{call:?}");
    assert_eq!(&call.arguments["check_out_date"], d_out, "{call:?}");
    // Without cues the model's liking wins: both dates are the check-out.
    let call = decode(&with(0.0));
    assert_eq!(&call.arguments["check_in_date"], d_out, "{call:?}");
}

/// A grounded reply (`ground_replies`) states only numbers and names its prompt holds: a model
/// that likes a number it memorized and a word nobody in this conversation said ("Yes",
/// capitalized mid-sentence) writes the result's rating instead, and no unsaid name. (The
/// prompt holds no date: "2019" stands for a number it memorized.)
#[test]
fn grounded_replies_state_only_what_the_prompt_holds() {
    use tracelab_core::job::DecodeParams;
    use tracelab_student::grammar::{CallState, SpanSetup};

    let (mut rng, convs, tpl) = houses();
    let rules = ValueRules::learn(&tpl, &convs, &RuleParams::default());
    // The prompt ends with the search's result (rated 4.5); the reply is due.
    let stay = conversation(&mut rng, 60);
    let prompt = tpl.prompt(&stay.messages[..3], 512, 64);
    let prompt_text = tpl.decode(&prompt.tokens);

    let mut name_scores = vec![0f32; tpl.vocab];
    for t in tpl.encode(&format!(" {DEFAULT_RESPOND}")) {
        name_scores[t as usize] = 5.0;
    }
    let single = |text: &str| {
        let t = tpl.encode(text);
        assert_eq!(t.len(), 1, "{text:?} is one token of this tokenizer: {t:?}");
        t[0] as usize
    };
    let mut value_scores = vec![0f32; tpl.vocab];
    value_scores[single(" rated")] = 3.0;
    value_scores[single(" Yes")] = 2.6;
    value_scores[single(" 2019")] = 2.5;
    value_scores[single(" 4")] = 1.0;
    value_scores[single(".")] = 0.9;
    value_scores[single("5")] = 0.8;
    value_scores[tpl.sp.end as usize] = 0.5;
    let reply = |ground_replies: bool| {
        let decoding = DecodeParams {
            ground_replies,
            ..DecodeParams::default()
        };
        let setup = SpanSetup::new(&tpl, &rules, &decoding);
        let st = CallState::with_spans(setup.source(&prompt.tokens, &prompt.copyable));
        let call = decode_call(&tpl, st, &name_scores, &value_scores);
        assert_eq!(call.name, DEFAULT_RESPOND);
        call.arguments["message"].as_str().unwrap().to_string()
    };
    let free = reply(false);
    assert!(free.contains("Yes") && free.contains("2019"), "{free:?}");
    let grounded = reply(true);
    assert!(
        !grounded.contains("Yes") && !grounded.contains("2019"),
        "{grounded:?}"
    );
    assert!(grounded.contains("4.5"), "{grounded:?}");
    // Every number it states is one the prompt holds.
    for n in grounded
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|n| n.trim_matches('.'))
        .filter(|n| !n.is_empty())
    {
        assert!(
            prompt_text.contains(n),
            "{n:?} of {grounded:?} is in the prompt"
        );
    }
}

/// Evidence words are the fewest that cover the calls, the schema's own words first: where every
/// user who wants laundry says "ideally … laundry", and a few who do not want it say "no
/// laundry", "ideally" predicts the flag better in these conversations, but it is the word
/// "laundry" (of `has_laundry_service`) that real users share, and it alone covers the calls.
#[test]
fn evidence_is_the_schemas_word_where_it_covers_the_calls() {
    use tracelab_student::train::evidence_params;

    let tools = tools();
    let search = |i: usize, text: &str, laundry: bool| {
        let mut args = json!({"where_to": format!("Town{i}")});
        if laundry {
            args["has_laundry_service"] = json!("True");
        }
        Conversation {
            id: format!("c{i}"),
            messages: vec![user(text), call("SearchHouse", args)],
            meta: Map::new(),
        }
    };
    let mut convs = Vec::new();
    for i in 0..40 {
        let (text, laundry) = match i % 8 {
            0 | 4 => ("A house, ideally one with laundry.", true),
            1 => ("A house please, no laundry needed.", false),
            _ => ("A house please.", false),
        };
        convs.push(search(i, text, laundry));
    }
    let tok = tokenizer::train_bpe(&corpus_texts(&convs, &tools), 300, 2).unwrap();
    let tpl = ChatTemplate::new(tok, &tools, 2, None).unwrap();
    let evidence = evidence_params(&tpl, &convs, &RuleParams::default());
    let words = &evidence["SearchHouse"]["has_laundry_service"];
    assert_eq!(
        words.iter().map(String::as_str).collect::<Vec<_>>(),
        ["laundry"]
    );
}

/// A function whose required date (a digits-shaped span argument) has nothing in the prompt to
/// be copied from is not called (`feasible_calls`): the booking waits for the user's dates.
#[test]
fn a_call_waits_for_the_digits_its_required_arguments_copy() {
    use tracelab_core::job::DecodeParams;
    use tracelab_student::grammar::{CallState, SpanSetup};

    let (_, convs, tpl) = houses();
    let rules = ValueRules::learn(&tpl, &convs, &RuleParams::default());
    assert_eq!(
        rules.span_params["BookHouse"].get("check_in_date"),
        Some(&SpanShape::Digits)
    );
    // A model that wants to book.
    let mut name_scores = vec![0f32; tpl.vocab];
    for t in tpl.encode(" BookHouse") {
        name_scores[t as usize] = 5.0;
    }
    let value_scores = vec![0f32; tpl.vocab];
    let first = |messages: &[Message], feasible_calls: bool| {
        let decoding = DecodeParams {
            feasible_calls,
            ..DecodeParams::default()
        };
        let prompt = tpl.prompt(messages, 512, 64);
        let setup = SpanSetup::new(&tpl, &rules, &decoding);
        let st = CallState::with_spans(setup.source(&prompt.tokens, &prompt.copyable));
        decode_call(&tpl, st, &name_scores, &value_scores).name
    };
    let undated = [user("I want to book a house in Kovel.")];
    assert_eq!(first(&undated, false), "BookHouse");
    assert_ne!(first(&undated, true), "BookHouse");
    let dated = [user(
        "I want to book a house in Kovel from March 5 to March 9.",
    )];
    assert_eq!(first(&dated, true), "BookHouse");
}

/// A place's value takes no word in lower case where training's never did (`cased_rate`): the
/// copy of "Kovel city is lovely" stops at "Kovel".
#[test]
fn a_cased_value_stops_before_a_word_in_lower_case() {
    use tracelab_core::job::DecodeParams;
    use tracelab_student::grammar::{CallState, SpanSetup};

    let (_, convs, tpl) = houses();
    let with = |cased_rate: f64| {
        let r = RuleParams {
            cased_rate,
            ..RuleParams::default()
        };
        ValueRules::learn(&tpl, &convs, &r)
    };
    let rules = with(0.02);
    assert!(
        rules.cased_params["SearchHouse"].contains("where_to"),
        "{:?}",
        rules.cased_params
    );
    assert!(
        with(0.0).cased_params.is_empty(),
        "cased_rate 0 learns none"
    );

    let prompt = tpl.prompt(&[user("A house in Kovel city is what I need.")], 512, 64);
    let mut name_scores = vec![0f32; tpl.vocab];
    for t in tpl.encode(" SearchHouse") {
        name_scores[t as usize] = 5.0;
    }
    // The model likes every word of the sentence in the value, and ending it little.
    let mut value_scores = vec![0f32; tpl.vocab];
    for t in tpl.encode(" Kovel city is what I need") {
        value_scores[t as usize] = 1.0;
    }
    let place = |rules: &ValueRules| {
        let setup = SpanSetup::new(&tpl, rules, &DecodeParams::default());
        let st = CallState::with_spans(setup.source(&prompt.tokens, &prompt.copyable));
        let call = decode_call(&tpl, st, &name_scores, &value_scores);
        call.arguments["where_to"].as_str().unwrap().to_string()
    };
    eprintln!(
        "TOKENS {:?}",
        tpl.encode(" Kovel city is what I need")
            .iter()
            .map(|t| tpl.decode(&[*t]))
            .collect::<Vec<_>>()
    );
    assert_eq!(place(&rules), "Kovel");
    assert!(
        place(&with(0.0)).starts_with("Kovel city"),
        "{}",
        place(&with(0.0))
    );
}
