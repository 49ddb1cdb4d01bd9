//! The offline teacher's own language: how it phrases requests, answers and acts when the traces
//! offer few phrasings of their own.
//!
//! An LLM teacher brings general conversational English and world knowledge to a handful of
//! traces; the offline teacher brings this module. Nothing here is specific to one service: an
//! argument's [`Role`] (a place, a time, a count, …) is read from its name and description, the
//! thing a search finds ("restaurant") and what a transaction does ("reserve a table at …") are
//! read from the functions' descriptions.
//!
//! The learned phrasings stay the domain signal: callers use them most of the time
//! ([`LEARNED_SHARE`]) and these built-ins for the rest, or where the traces taught none.

use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tracelab_core::text::identifier_words;

/// What kind of thing an argument's value is, which decides how a person says it in a sentence.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A city, town or area: "in {v}".
    Place,
    /// A calendar day: "on {v}", "tomorrow".
    Date,
    /// A clock time: "at {v}".
    Time,
    /// How many people or items: "for {v} people".
    Count,
    /// The proper name of a thing (a restaurant, a hotel): "at {v}".
    Name,
    /// A kind or category (a cuisine, a price range): "{v} places".
    Category,
}

impl Role {
    /// Reads the role from an argument's name and JSON schema.
    pub fn of_schema(name: &str, schema: &serde_json::Value) -> Role {
        let description = schema
            .get("description")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        let integer = schema.get("type").and_then(serde_json::Value::as_str) == Some("integer");
        Role::of(name, description, integer)
    }

    /// Reads the role from an argument's name and schema description.
    pub fn of(name: &str, description: &str, integer: bool) -> Role {
        let n = name.to_ascii_lowercase();
        let d = description.to_ascii_lowercase();
        let has = |s: &str, words: &[&str]| words.iter().any(|w| s.contains(w));
        if has(&n, &["date", "day"]) {
            Role::Date
        } else if has(&n, &["time", "hour"]) {
            Role::Time
        } else if integer
            || has(&n, &["number_of", "num_"])
            // Whole words: "account_type" holds "count" and is no count.
            || identifier_words(name).iter().any(|w| {
                ["size", "count", "people", "guests", "seats"].contains(&w.as_str())
            })
        {
            Role::Count
        } else if has(
            &n,
            &["city", "town", "location", "area", "region", "neighborhood"],
        ) || (has(&d, &["city", "town"]) && !n.ends_with("name"))
        {
            Role::Place
        } else if n == "name" || n.ends_with("_name") || n == "title" {
            Role::Name
        } else {
            Role::Category
        }
    }
}

/// The share of choices that use a learned phrasing where the traces offer one. Measured
/// (MEASUREMENTS.md): weighing the built-ins up where traces are few made low-data students
/// worse, not better.
pub const LEARNED_SHARE: f64 = 0.85;

/// "a" or "an" before `word`.
fn article(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// English plural of a noun ("restaurant" → "restaurants", "city" → "cities").
pub fn plural(noun: &str) -> String {
    if let Some(stem) = noun
        .strip_suffix('y')
        .filter(|s| !s.ends_with(['a', 'e', 'o', 'u']))
    {
        format!("{stem}ies")
    } else if noun.ends_with(['s', 'x']) || noun.ends_with("ch") || noun.ends_with("sh") {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

/// The thing a search finds, from its description: "Find a restaurant of a particular cuisine"
/// → "restaurant"; "place" when the description names none.
pub fn search_noun(description: &str) -> String {
    let words: Vec<String> = description
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .collect();
    words
        .windows(2)
        .find(|p| ["a", "an", "the", "some"].contains(&p[0].as_str()) && p[1].len() > 2)
        .map(|p| p[1].clone())
        .filter(|w| !["particular", "given", "specific", "certain", "new"].contains(&w.as_str()))
        .unwrap_or_else(|| "place".into())
}

/// What a transaction does, from its description, with `{}` where the booked thing's name
/// goes: "Reserve a table at a restaurant" → ("reserve a table", "reserve a table at {}").
/// A description without such a prepositional tail gets "… for {}"; one of a single word,
/// "make a booking".
pub fn transaction_phrase(description: &str, noun: &str) -> (String, String) {
    let d = description.trim().trim_end_matches('.');
    let lower = d.to_lowercase();
    for prep in [" at ", " in ", " for ", " with ", " on "] {
        if let Some(p) = lower.find(prep) {
            let head = lower[..p].to_string();
            let tail = lower[p + prep.len()..].to_string();
            // "… at a restaurant": the booked thing's noun is where its name goes.
            if tail.split_whitespace().any(|w| w == noun) || tail.split_whitespace().count() <= 2 {
                return (head.clone(), format!("{head}{prep}{{}}"));
            }
        }
    }
    if lower.split_whitespace().count() >= 2 {
        (lower.clone(), format!("{lower} for {{}}"))
    } else {
        ("make a booking".into(), "make a booking at {}".into())
    }
}

/// How `v` (already said as people say it) is put into a sentence for an argument of `role`
/// named `h` in words ("price range").
pub fn slot_phrase(rng: &mut ChaCha8Rng, role: Role, h: &str, v: &str) -> String {
    match role {
        Role::Place => match direction(h) {
            Some(Direction::From) => ["from {v}", "from {v}", "leaving from {v}", "out of {v}"],
            Some(Direction::To) => ["to {v}", "to {v}", "going to {v}", "headed to {v}"],
            None => ["in {v}", "in {v}", "around {v}", "near {v}"],
        }
        .iter()
        .chain(direction(h).is_none().then_some(&"in the {v} area"))
        .collect::<Vec<_>>()
        .choose(rng)
        .expect("non-empty")
        .replace("{v}", v),
        Role::Date => {
            let bare = [
                "today",
                "tomorrow",
                "tonight",
                "this ",
                "next ",
                "the day after",
            ]
            .iter()
            .any(|p| v.to_ascii_lowercase().starts_with(p));
            if bare {
                v.to_string()
            } else {
                ["on {v}", "for {v}"]
                    .choose(rng)
                    .expect("non-empty")
                    .replace("{v}", v)
            }
        }
        Role::Time => ["at {v}", "at {v}", "for {v}", "around {v}"]
            .choose(rng)
            .expect("non-empty")
            .replace("{v}", v),
        Role::Count => {
            if v == "1" || v.eq_ignore_ascii_case("one") {
                ["for one person", "just for me", "for one"]
                    .choose(rng)
                    .expect("non-empty")
                    .to_string()
            } else if let Some(noun) = counted_thing(h) {
                // "number of tickets": tickets, not people.
                ["{v} {n}", "{v} {n}", "for {v} {n}"]
                    .choose(rng)
                    .expect("non-empty")
                    .replace("{v}", v)
                    .replace("{n}", &noun)
            } else {
                [
                    "for {v} people",
                    "for {v}",
                    "for a party of {v}",
                    "for {v} of us",
                ]
                .choose(rng)
                .expect("non-empty")
                .replace("{v}", v)
            }
        }
        Role::Name => format!("at {v}"),
        Role::Category => ["with {v} {h}", "with {h} {v}"]
            .choose(rng)
            .expect("non-empty")
            .replace("{v}", v)
            .replace("{h}", h),
    }
}

/// Which way a place argument points, from its name in words ("origin city", "where to").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    From,
    To,
}

fn direction(h: &str) -> Option<Direction> {
    let ws = identifier_words(h);
    let has = |list: &[&str]| ws.iter().any(|w| list.contains(&w.as_str()));
    if has(&[
        "origin",
        "from",
        "departure",
        "departing",
        "leaving",
        "source",
    ]) {
        Some(Direction::From)
    } else if has(&["destination", "to", "arrival", "arriving", "dest"]) {
        Some(Direction::To)
    } else {
        None
    }
}

/// Words that count persons: a count argument named with one (or with none: "party size",
/// "count") is said as a number of people.
const PERSON_WORDS: &[&str] = &[
    "people",
    "persons",
    "person",
    "guests",
    "guest",
    "adults",
    "adult",
    "party",
    "size",
    "diners",
    "travelers",
    "travellers",
    "passengers",
    "group",
];

/// The thing a count argument counts when it is not persons: the last word of its name in words
/// ("number of tickets" → "tickets", "num rooms" → "rooms").
fn counted_thing(h: &str) -> Option<String> {
    let ws: Vec<String> = identifier_words(h)
        .into_iter()
        .filter(|w| !["number", "num", "of", "count", "total", "the"].contains(&w.as_str()))
        .collect();
    let last = ws.last()?;
    (!ws.iter().any(|w| PERSON_WORDS.contains(&w.as_str()))).then(|| last.clone())
}

/// One stated value: its role, its argument name in words and how it is said.
pub struct Said<'a> {
    /// The argument's role.
    pub role: Role,
    /// The argument's name in words ("price range").
    pub human: &'a str,
    /// The value as said ("7 pm", "Mexican").
    pub value: &'a str,
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn sentence(s: &str, question: bool) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{}{}", capitalize(&s), if question { "?" } else { "." })
}

/// A search request stating `said`: categories before the noun, places and the rest after it
/// ("Are there any Mexican restaurants in San Jose?").
pub fn search_request(rng: &mut ChaCha8Rng, noun: &str, said: &[Said<'_>]) -> String {
    let noun = if rng.random_bool(0.25) { "place" } else { noun };
    let mut mods: Vec<String> = Vec::new();
    let mut after: Vec<String> = Vec::new();
    for s in said {
        if s.role == Role::Category && rng.random_bool(0.8) {
            mods.push(s.value.to_string());
        } else {
            after.push(slot_phrase(rng, s.role, s.human, s.value));
        }
    }
    let m = mods.join(" ");
    let a = after.join(" ");
    let one = format!(
        "{} {m} {noun}",
        article(if m.is_empty() { noun } else { &m })
    );
    let many = format!("{m} {}", plural(noun));
    let (frame, question) = *[
        ("I'm looking for {one} {a}", false),
        ("Can you find me {one} {a}", true),
        ("Are there any {many} {a}", true),
        ("Find me {one} {a}, please", false),
        ("Search for {many} {a}", false),
        ("I'd like to find {one} {a}", false),
        ("Could you look for {many} {a}", true),
        ("Please find {many} {a}", false),
        ("Any good {many} {a}", true),
        ("I need {one} {a}", false),
        ("Show me {many} {a}", false),
        ("Help me find {one} {a}", false),
        ("I want to find {one} {a}", false),
        ("Do you know {one} {a}", true),
        ("Look up {many} {a}", false),
        ("I'm searching for {one} {a}", false),
    ]
    .choose(rng)
    .expect("non-empty");
    sentence(
        &frame
            .replace("{one}", &one)
            .replace("{many}", &many)
            .replace("{a}", &a),
        question,
    )
}

/// The act of `phrase` (see [`transaction_phrase`]), naming the booked thing when `name` is given.
fn act(phrase: &(String, String), name: Option<&str>) -> String {
    match name {
        Some(n) => phrase.1.replace("{}", n),
        None => phrase.0.clone(),
    }
}

/// One of `frames` (a text with `{act}` and `{rest}`, and whether it asks) as a sentence.
fn framed(rng: &mut ChaCha8Rng, frames: &[(&str, bool)], act: &str, rest: &[String]) -> String {
    let (frame, question) = *frames.choose(rng).expect("non-empty");
    sentence(
        &frame
            .replace("{act}", act)
            .replace("{rest}", &rest.join(" ")),
        question,
    )
}

/// A transaction request ("Can you reserve a table at Lupa at 7 pm for 2 people?"); `name` is
/// the booked thing's name when the user says it.
pub fn transaction_request(
    rng: &mut ChaCha8Rng,
    phrase: &(String, String),
    name: Option<&str>,
    said: &[Said<'_>],
) -> String {
    let rest: Vec<String> = said
        .iter()
        .map(|s| slot_phrase(rng, s.role, s.human, s.value))
        .collect();
    let frames = [
        ("I'd like to {act} {rest}", false),
        ("Please {act} {rest}", false),
        ("Can you {act} {rest}", true),
        ("I want to {act} {rest}", false),
        ("Could you {act} {rest}, please", true),
        ("Let's {act} {rest}", false),
        ("I would like you to {act} {rest}", false),
        ("Go ahead and {act} {rest}", false),
    ];
    framed(rng, &frames, &act(phrase, name), &rest)
}

/// The assistant's confirmation before a transaction ("Please confirm: reserve a table at
/// Lupa in San Jose at 7 pm for 2 people."); states every value in `said`.
pub fn confirmation(
    rng: &mut ChaCha8Rng,
    phrase: &(String, String),
    name: Option<&str>,
    said: &[Said<'_>],
) -> String {
    let rest: Vec<String> = said
        .iter()
        .map(|s| match s.role {
            Role::Category | Role::Name => format!("with {} {}", s.human, s.value),
            _ => slot_phrase(rng, s.role, s.human, s.value),
        })
        .collect();
    let frames = [
        ("Please confirm: {act} {rest}", false),
        ("Just to confirm, you'd like to {act} {rest}", true),
        ("So you want me to {act} {rest}, is that right", true),
        ("Can you confirm that you want to {act} {rest}", true),
        ("Okay, I will {act} {rest}. Is that correct", true),
        ("Please confirm the following: {act} {rest}", false),
        ("To confirm: {act} {rest}. Shall I go ahead", true),
        ("You'd like me to {act} {rest}. Does that sound right", true),
    ];
    framed(rng, &frames, &act(phrase, name), &rest)
}

/// A short answer giving one value the assistant asked for ("In San Jose.", "Mexican, please.").
pub fn answer(rng: &mut ChaCha8Rng, s: &Said<'_>) -> String {
    let v = s.value;
    let frames: &[&str] = match s.role {
        Role::Place => &[
            "{v}.",
            "In {v}.",
            "{v}, please.",
            "Somewhere in {v}.",
            "I'm in {v}.",
            "Search in {v}.",
            "Let's try {v}.",
            "In {v}, please.",
            "{v} would be great.",
            "How about {v}?",
            "I'd like it to be in {v}.",
        ],
        Role::Category => &[
            "{v}.",
            "{v}, please.",
            "{v} {h}.",
            "I'd like {v}.",
            "I'm thinking {v}.",
            "{v} would be nice.",
            "Something {v}.",
            "Let's go with {v}.",
            "I'd prefer {v}.",
            "Make it {v}.",
            "How about {v}?",
            "I want {v}.",
        ],
        Role::Time => &[
            "At {v}.",
            "{v}.",
            "{v}, please.",
            "Around {v}.",
            "Let's say {v}.",
            "Make it {v}.",
            "At {v}, please.",
        ],
        Role::Date => &[
            "{p}.",
            "{v}, please.",
            "{p}, please.",
            "Let's do {v}.",
            "Make it {v}.",
        ],
        Role::Count => &["{p}.", "{p}, please.", "It's {p}.", "Make it {p}."],
        Role::Name => &[
            "{v}.",
            "{v}, please.",
            "The one called {v}.",
            "I'd like {v}.",
        ],
    };
    let f = frames.choose(rng).expect("non-empty");
    let p = if f.contains("{p}") {
        slot_phrase(rng, s.role, s.human, v)
    } else {
        String::new()
    };
    sentence(
        f.trim_end_matches(['.', '?'])
            .replace("{v}", v)
            .replace("{h}", s.human)
            .replace("{p}", &p)
            .as_str(),
        f.ends_with('?'),
    )
}

/// Value-free first messages.
pub const OPENER: &[&str] = &[
    "Hi, I need some help finding something.",
    "Hello, can you help me look something up?",
    "Hi there, I'm looking for a recommendation.",
    "Can you help me find a place?",
    "I need to find a place.",
    "Can you help me with a search?",
    "Hi, could you help me find something?",
    "I'm looking for a good place, can you help?",
    "Please help me find somewhere.",
    "Hey, I need a suggestion.",
];

/// Value-free requests for another result.
pub const ANOTHER: &[&str] = &[
    "Are there any other options?",
    "What else do you have?",
    "Can you suggest something else?",
    "Anything else you can find?",
    "Do you have any other suggestions?",
    "What other options are there?",
    "Show me another one.",
    "Is there anything else?",
    "I don't like that one. What else is there?",
    "Any others?",
    "Can you find another one?",
    "Give me another option, please.",
];

/// Value-free confirmations of what the assistant is about to do.
pub const CONFIRM_U: &[&str] = &[
    "Yes, please go ahead.",
    "Yes, that's right.",
    "That works, please book it.",
    "Sounds good, yes.",
    "Yes.",
    "Yes, please.",
    "That's correct.",
    "Correct.",
    "Yep, that's it.",
    "Sounds great, go ahead.",
    "Perfect.",
    "Please do.",
    "That works for me.",
    "Yes, that works.",
    "Sure.",
    "Yeah, that's right.",
    "Yes, go ahead.",
    "That is correct.",
    "Great, yes.",
    "Looks good.",
    "All correct.",
    "Yes, confirm it.",
    "Right, go ahead.",
    "Okay, do it.",
    "Yes, that's perfect.",
];

/// Value-free closing thanks after something was done.
pub const THANKS: &[&str] = &[
    "Thanks, that's all I needed.",
    "Thank you, that's everything.",
    "Great, thanks for your help.",
    "No, that will be all. Thanks!",
    "Thank you so much.",
    "That's all, thanks.",
    "Thanks a lot!",
    "Nothing else, thank you.",
    "Perfect, thank you.",
    "No, thanks. That's it.",
];

/// User requests to hear a confirmation again.
pub const REPEAT: &[&str] = &[
    "Sorry, could you repeat the details?",
    "Can you say that again, please?",
    "Could you go over that once more?",
];

/// Value-free endings without a transaction.
pub const DECLINE: &[&str] = &[
    "Not right now, thanks. That's all.",
    "No need to book anything, thank you.",
    "That's all I wanted to know, thanks.",
    "I'll think about it. Thanks for your help.",
    "No, thank you. That's all for now.",
    "Thanks, I don't need anything else.",
];

/// Assistant closings.
pub const CLOSE: &[&str] = &[
    "You're welcome. Have a great day!",
    "Glad I could help. Enjoy!",
    "Happy to help. Goodbye!",
    "Have a nice day.",
    "You're welcome, enjoy!",
    "Anytime. Have a good one!",
];

/// Leads of a request to search again with a changed value.
pub const RESEARCH_LEAD: &[&str] = &[
    "Actually, let me change that.",
    "Hmm, can you search again?",
    "Let's try something else.",
    "Could you look again?",
    "Can you check again?",
    "Never mind, try another search.",
    "What about something different?",
    "I changed my mind.",
    "Could you search once more?",
];

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn roles_come_from_names_and_descriptions() {
        for (name, description, role) in [
            (
                "city",
                "City in which the restaurant is located",
                Role::Place,
            ),
            ("date", "Date for the reservation", Role::Date),
            ("time", "Time for the reservation", Role::Time),
            ("party_size", "Party size for a reservation", Role::Count),
            ("restaurant_name", "Name of the restaurant", Role::Name),
            ("cuisine", "Cuisine of food served", Role::Category),
            ("where_to", "Town or city of the hotel", Role::Place),
            ("guest_count", "How many guests", Role::Count),
            ("account_type", "Checking or savings", Role::Category),
        ] {
            assert_eq!(Role::of(name, description, false), role, "{name}");
        }
    }

    #[test]
    fn nouns_and_transaction_phrases_come_from_descriptions() {
        let noun = search_noun("Find a restaurant of a particular cuisine in a city");
        assert_eq!(noun, "restaurant");
        assert_eq!(plural("city"), "cities");
        assert_eq!(search_noun("Search hotels"), "place");
        let p = transaction_phrase("Reserve a table at a restaurant", &noun);
        assert_eq!(p.0, "reserve a table");
        assert_eq!(p.1.replace("{}", "Lupa"), "reserve a table at Lupa");
    }

    #[test]
    fn requests_state_every_value_once() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let said = [
                Said {
                    role: Role::Category,
                    human: "cuisine",
                    value: "Mexican",
                },
                Said {
                    role: Role::Place,
                    human: "city",
                    value: "San Jose",
                },
            ];
            let t = search_request(&mut rng, "restaurant", &said);
            assert_eq!(t.matches("Mexican").count(), 1, "{t}");
            assert_eq!(t.matches("San Jose").count(), 1, "{t}");
            assert!(!t.contains("  "), "{t}");
            let a = answer(&mut rng, &said[1]);
            assert!(a.contains("San Jose"), "{a}");
            let phrase = (
                "reserve a table".to_string(),
                "reserve a table at {}".to_string(),
            );
            let t = transaction_request(
                &mut rng,
                &phrase,
                Some("Lupa"),
                &[Said {
                    role: Role::Time,
                    human: "time",
                    value: "7 pm",
                }],
            );
            assert!(t.contains("Lupa") && t.contains("7 pm"), "{t}");
        }
    }

    #[test]
    fn counts_and_places_are_said_as_their_argument_names_mean() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..20 {
            let p = slot_phrase(&mut rng, Role::Count, "number of tickets", "3");
            assert!(p.contains("3 tickets"), "{p}");
            let p = slot_phrase(&mut rng, Role::Count, "numberOfRooms", "2");
            assert!(p.contains("2 rooms"), "{p}");
            let p = slot_phrase(&mut rng, Role::Count, "party size", "4");
            assert!(!p.contains("size"), "{p}");
            let p = slot_phrase(&mut rng, Role::Place, "origin city", "Boston");
            assert!(
                p.contains("from Boston") || p.contains("out of Boston"),
                "{p}"
            );
            let p = slot_phrase(&mut rng, Role::Place, "destination_city", "Denver");
            assert!(p.contains("to Denver"), "{p}");
            let p = slot_phrase(&mut rng, Role::Place, "city", "Paris");
            assert!(!p.contains("from") && !p.contains("to "), "{p}");
        }
    }
}
