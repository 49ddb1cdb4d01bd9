//! The offline teacher's phrasebook: how people word requests, answers, confirmations and
//! questions in *other* services' dialogues (by default SGD's services the experiment does not
//! read), so that a teacher given five traces still knows more ways to say things than those five.
//!
//! Learning reuses the teacher's own trace reading ([`Domain::extract`]) on each service of the
//! corpus with that service's tools: its phrasings come out delexicalized, with `{argument}`
//! placeholders. Each placeholder is typed by the argument's [`Role`] (a place, a date, a time, a
//! count, a name) and described by its name's words; a target schema takes a phrasing when every
//! placeholder maps to exactly one target argument of the same role. Words that only a few
//! domains of the corpus use ("flight", "movie", "hotel") keep a phrasing out of a target whose
//! traces never say them; nothing here knows which words those are.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::builtin::Role;
use super::offline::{Domain, Templates};
use super::Context;
use crate::conversation::{Conversation, Message};
use crate::task::{Task, TaskSettings};
use crate::tools::{FunctionKind, ToolSet};
use tracelab_core::text::identifier_words;

/// A phrasebook: phrasings of many services with typed placeholders.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phrasebook {
    /// Services learned from, with the dialogues each gave.
    pub services: BTreeMap<String, usize>,
    /// The phrasings.
    pub entries: Vec<Entry>,
    /// The values the services' calls took, by role, for the roles whose values any domain
    /// may share (places, names, counts): a teacher whose few traces name three cities can
    /// draw from hundreds, so its student learns to copy a city rather than memorize one.
    #[serde(default)]
    pub values: BTreeMap<Role, Vec<String>>,
}

/// Roles whose values a target may borrow: a city is a city in any domain, and a name or a
/// count is copied from the conversation whatever it names.
pub fn shares_values(role: Role) -> bool {
    matches!(role, Role::Place | Role::Name | Role::Count)
}

/// Which part of a conversation a phrasing plays (the offline teacher's [`Templates`] fields
/// whose text does not depend on one domain's result fields; a repeated search changes a
/// category most of the time, which stays in its domain, so none of those).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A user message giving values.
    Inform,
    /// A user message giving values that led to a transaction.
    Request,
    /// An assistant question for one argument.
    Ask,
    /// A value-free first user message.
    Opener,
    /// A value-free user confirmation.
    ConfirmU,
    /// A value-free user closing.
    Thanks,
    /// A value-free request for another result.
    Another,
    /// An assistant closing.
    Close,
}

/// One phrasing of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Its part in a conversation.
    pub kind: Kind,
    /// The service it was learned from.
    pub service: String,
    /// The text, with `{argument}` placeholders named by the service's arguments.
    pub text: String,
    /// Each placeholder's role and the words of its argument's name.
    pub slots: BTreeMap<String, Slot>,
    /// The text's words (outside placeholders) that less than [`COMMON_SHARE`] of the corpus's
    /// domains say: a target takes the phrasing only where its traces say them too.
    pub rare: Vec<String>,
}

/// What a placeholder holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    /// The kind of value.
    pub role: Role,
    /// Words of the argument's name (`origin_city` → origin, city).
    pub words: Vec<String>,
}

/// A word said in at least this share of the corpus's domains (SGD's service names before the
/// `_`: Flights_1 and Flights_3 are one domain) is common English; rarer words tie a phrasing to
/// its domain. Read off SGD's 13 other domains, not measured: "want", "find", "help" are said in
/// all 13, "reserve" and "people" in 8; "hotel" and "room" in 7, "tickets" in 5, "car" in 4.
pub const COMMON_SHARE: f64 = 0.6;

/// Roles a phrasing may carry over: a category's values and words belong to its domain
/// ("{genre} movies"), so phrasings with one stay where they were learned.
fn portable(role: Role) -> bool {
    matches!(
        role,
        Role::Place | Role::Date | Role::Time | Role::Count | Role::Name
    )
}

/// Lower-case words of a text outside its placeholders.
fn text_words(t: &str) -> Vec<String> {
    let mut outside = String::with_capacity(t.len());
    let mut depth = 0usize;
    for c in t.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
        if matches!(c, '{' | '}') {
            outside.push(' ');
        }
    }
    outside
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| w.chars().any(char::is_alphabetic))
        .collect()
}

/// The domain of a service: `Flights_3` → `Flights`.
fn domain_of(service: &str) -> &str {
    service.split('_').next().unwrap_or(service)
}

/// The words a conversation's users and assistant say.
fn said_words(c: &Conversation, respond: &str, into: &mut BTreeSet<String>) {
    for m in &c.messages {
        match m {
            Message::User { content } => into.extend(text_words(content)),
            Message::Assistant { tool_calls, .. } => {
                for call in tool_calls.iter().filter(|c| c.name == respond) {
                    for v in call.arguments.values().filter_map(|v| v.as_str()) {
                        into.extend(text_words(v));
                    }
                }
            }
            _ => {}
        }
    }
}

/// The lower-case words a set of conversations says (users and replies): a target's
/// vocabulary, against which a phrasing's rare words are checked.
pub fn vocabulary(convs: &[Conversation], respond: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for c in convs {
        said_words(c, respond, &mut out);
    }
    out
}

/// Which domains of the corpus say each word, and how many make a word common.
struct Rarity<'g> {
    domains: BTreeMap<String, BTreeSet<&'g str>>,
    common: usize,
}

impl<'g> Rarity<'g> {
    fn of(groups: &'g [(String, ToolSet, Vec<Conversation>)]) -> Self {
        let mut domains: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for (service, tools, convs) in groups {
            let respond = tools.respond().map(|f| f.name.clone()).unwrap_or_default();
            for w in vocabulary(convs, &respond) {
                domains.entry(w).or_default().insert(domain_of(service));
            }
        }
        let all: BTreeSet<&str> = groups.iter().map(|g| domain_of(&g.0)).collect();
        let common = (COMMON_SHARE * all.len() as f64).ceil() as usize;
        Rarity { domains, common }
    }

    /// The words of a text (outside placeholders) that fewer than `common` domains say.
    fn rare_words(&self, text: &str) -> Vec<String> {
        let rare: BTreeSet<String> = text_words(text)
            .into_iter()
            .filter(|w| self.domains.get(w).map_or(0, BTreeSet::len) < self.common)
            .collect();
        rare.into_iter().collect()
    }
}

/// Adds a service's accepted values of the roles any domain shares to `into`.
fn collect_values(
    domain: &Domain,
    slots: &BTreeMap<String, Slot>,
    into: &mut BTreeMap<Role, BTreeSet<String>>,
) {
    for (arg, values) in &domain.values {
        let Some(slot) = slots.get(arg).filter(|s| shares_values(s.role)) else {
            continue;
        };
        // A place with a number in it is a street address, not a city or an area.
        let fits = |v: &&String| slot.role != Role::Place || !v.chars().any(|c| c.is_ascii_digit());
        into.entry(slot.role)
            .or_default()
            .extend(values.iter().filter(fits).cloned());
    }
}

/// The role and name words of every non-reply argument of a tool set.
fn arg_slots(tools: &ToolSet) -> BTreeMap<String, Slot> {
    let mut out = BTreeMap::new();
    for f in tools
        .functions
        .iter()
        .filter(|f| f.kind != FunctionKind::Respond)
    {
        for name in f.parameter_names() {
            let schema = f.parameter(name).expect("listed");
            if schema.get("type").and_then(|t| t.as_str()) == Some("boolean") {
                continue;
            }
            let role = Role::of_schema(name, schema);
            out.entry(name.to_string()).or_insert_with(|| Slot {
                role,
                words: identifier_words(name),
            });
        }
    }
    out
}

impl Phrasebook {
    /// Learns the phrasings of each service's conversations against its own tools (dates
    /// relative to SGD's "today", the task default).
    pub fn learn(groups: &[(String, ToolSet, Vec<Conversation>)]) -> Self {
        let task = Task {
            settings: TaskSettings::default(),
            description: String::new(),
        };
        let rarity = Rarity::of(groups);
        let mut book = Phrasebook::default();
        let mut values_by_role: BTreeMap<Role, BTreeSet<String>> = BTreeMap::new();
        for (service, tools, convs) in groups {
            book.services.insert(service.clone(), convs.len());
            let ctx = Context {
                task: &task,
                tools,
                traces: convs,
            };
            let domain = Domain::extract(&ctx);
            let slots = arg_slots(tools);
            collect_values(&domain, &slots, &mut values_by_role);
            for (kind, text, asked) in entries_of(&domain.templates) {
                // A question's slot is the argument it asks for; a message's, its placeholders.
                let keys = match asked {
                    Some(arg) => vec![arg],
                    None => super::offline::placeholders(&text),
                };
                let Some(slots) = keys
                    .iter()
                    .map(|k| slots.get(k).map(|s| (k.clone(), s.clone())))
                    .collect::<Option<BTreeMap<_, _>>>()
                else {
                    continue; // a result field's placeholder: the target's fields differ
                };
                if !slots.values().all(|s| portable(s.role)) {
                    continue;
                }
                book.entries.push(Entry {
                    kind,
                    service: service.clone(),
                    rare: rarity.rare_words(&text),
                    text,
                    slots,
                });
            }
        }
        book.values = values_by_role
            .into_iter()
            .map(|(role, v)| (role, v.into_iter().collect()))
            .collect();
        book.drop_generic_questions();
        book
    }

    /// A question asked before values of different roles ("Is there anything else I can help
    /// you with?" before a date in one dialogue, a name in another) asks for none of them: the
    /// user just started a new request. So does any question for "anything else", the English
    /// way of offering more help, whatever one dialogue answered to it.
    fn drop_generic_questions(&mut self) {
        self.entries
            .retain(|e| e.kind != Kind::Ask || !text_words(&e.text).iter().any(|w| w == "else"));
        let mut roles: BTreeMap<String, BTreeSet<Role>> = BTreeMap::new();
        for e in self.entries.iter().filter(|e| e.kind == Kind::Ask) {
            let seen = roles.entry(e.text.to_lowercase()).or_default();
            seen.extend(e.slots.values().map(|s| s.role));
        }
        self.entries.retain(|e| {
            e.kind != Kind::Ask
                || roles
                    .get(&e.text.to_lowercase())
                    .is_none_or(|r| r.len() < 2)
        });
    }

    /// The phrasings a target schema can use, as offline-teacher templates named by its
    /// arguments: every placeholder maps to one target argument of its role (by name words
    /// where several share the role), no two to the same, and every rare word is one the
    /// target's traces say (`vocabulary`, lower case).
    pub fn for_target(&self, tools: &ToolSet, vocabulary: &BTreeSet<String>) -> Templates {
        let target = arg_slots(tools);
        let mut t = Templates::default();
        for e in &self.entries {
            if !e.rare.iter().all(|w| vocabulary.contains(w)) {
                continue;
            }
            let Some(map) = map_slots(&e.slots, &target) else {
                continue;
            };
            let mut text = e.text.clone();
            // Through a marker first: a source name may equal another slot's target name.
            for (i, from) in map.keys().enumerate() {
                text = text.replace(&format!("{{{from}}}"), &format!("{{\u{1}{i}}}"));
            }
            for (i, to) in map.values().enumerate() {
                text = text.replace(&format!("{{\u{1}{i}}}"), &format!("{{{to}}}"));
            }
            let mut key: Vec<String> = map.values().cloned().collect();
            key.sort();
            let push = |v: &mut Vec<String>, s: String| {
                if !v.contains(&s) {
                    v.push(s);
                }
            };
            match e.kind {
                Kind::Inform => push(t.inform.entry(key).or_default(), text),
                Kind::Request => push(t.request.entry(key).or_default(), text),
                Kind::Ask => {
                    if let [arg] = key.as_slice() {
                        push(t.ask.entry(arg.clone()).or_default(), text);
                    }
                }
                Kind::Opener => push(&mut t.opener, text),
                Kind::ConfirmU => push(&mut t.confirm_u, text),
                Kind::Thanks => push(&mut t.thanks, text),
                Kind::Another => push(&mut t.another, text),
                Kind::Close => push(&mut t.close, text),
            }
        }
        t
    }
}

/// Source placeholder → target argument, or `None` where one has no single match.
fn map_slots(
    slots: &BTreeMap<String, Slot>,
    target: &BTreeMap<String, Slot>,
) -> Option<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (name, slot) in slots {
        let same_role: Vec<(&String, &Slot)> =
            target.iter().filter(|(_, t)| t.role == slot.role).collect();
        let to = match same_role.as_slice() {
            [] => return None,
            [(only, _)] => (*only).clone(),
            several => {
                // Several of the role (an origin and a destination city): the one sharing the
                // most name words, if exactly one does best.
                let shared = |t: &Slot| t.words.iter().filter(|w| slot.words.contains(w)).count();
                let best = several.iter().map(|(_, t)| shared(t)).max().unwrap_or(0);
                let top: Vec<_> = several.iter().filter(|(_, t)| shared(t) == best).collect();
                match top.as_slice() {
                    [(n, _)] if best > 0 => (*n).clone(),
                    _ => return None,
                }
            }
        };
        if map.values().any(|v| v == &to) {
            return None;
        }
        map.insert(name.clone(), to);
    }
    Some(map)
}

/// Every phrasing of a service's templates with its kind (and for a question, the argument it
/// asks for).
fn entries_of(t: &Templates) -> Vec<(Kind, String, Option<String>)> {
    let mut out = Vec::new();
    let keyed = [(Kind::Inform, &t.inform), (Kind::Request, &t.request)];
    for (kind, map) in keyed {
        out.extend(map.values().flatten().map(|s| (kind, s.clone(), None)));
    }
    for (arg, list) in &t.ask {
        out.extend(
            list.iter()
                .map(|s| (Kind::Ask, s.clone(), Some(arg.clone()))),
        );
    }
    let plain = [
        (Kind::Opener, &t.opener),
        (Kind::ConfirmU, &t.confirm_u),
        (Kind::Thanks, &t.thanks),
        (Kind::Another, &t.another),
        (Kind::Close, &t.close),
    ];
    for (kind, list) in plain {
        out.extend(list.iter().map(|s| (kind, s.clone(), None)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::ToolCall;
    use serde_json::{json, Value};

    /// A service with a search by place and a booking of a named thing at a time for a count.
    fn service(search: &str, book: &str, place: &str, name: &str, count: &str) -> ToolSet {
        let s = |d: &str| json!({"type": "string", "description": d});
        ToolSet::from_openai(
            &json!([
                {"type": "function", "function": {"name": search, "x-kind": "search",
                  "parameters": {"type": "object", "properties": {place: s("the city")},
                      "required": [place], "additionalProperties": false}}},
                {"type": "function", "function": {"name": book, "x-kind": "transaction",
                  "parameters": {"type": "object", "properties": {name: s("the name"),
                      "time": s("the time"), count: {"type": "integer", "description": "how many"}},
                      "required": [name, "time", count], "additionalProperties": false}}}
            ]),
            crate::tools::DEFAULT_RESPOND,
            &[],
            "t",
        )
        .unwrap()
    }

    fn call(name: &str, args: Value) -> Message {
        Message::call(ToolCall::new(name, args.as_object().unwrap().clone()))
    }

    fn say(t: &str) -> Message {
        call("respond_to_user", json!({ "message": t }))
    }

    fn user(t: &str) -> Message {
        Message::User { content: t.into() }
    }

    fn results(r: Value) -> Message {
        Message::Tool {
            tool_call_id: String::new(),
            content: r.to_string(),
        }
    }

    /// Dialogue `i` of a hall-booking service (`FindHalls`, `BookHall`): its users say "hall".
    fn hall_dialogue(i: usize) -> Conversation {
        let city = ["Paris", "Oslo", "Lima", "Rome"][i % 4];
        let hall = ["Grand Hall", "Blue Hall", "Old Hall", "Red Hall"][i % 4];
        let time = ["18:30", "19:00", "17:15", "20:45"][i % 4];
        let n = 2 + i % 5;
        Conversation {
            id: format!("h{i}"),
            messages: vec![
                user(&format!("Please look in {city} for a hall.")),
                call("FindHalls", json!({"hall_city": city})),
                results(json!([{"hall_name": hall, "hall_city": city}])),
                say(&format!("How about {hall}?")),
                user(&format!("Reserve it, we will come {n} strong at {time}.")),
                say(&format!("Booking {hall} for {n} at {time}, correct?")),
                user("Yes, that works."),
                call(
                    "BookHall",
                    json!({"hall_name": hall, "time": time, "number_of_guests": n}),
                ),
                results(json!([{"hall_name": hall, "time": time}])),
                say("It is booked."),
                user("Thanks a lot."),
                say("Have a nice day."),
            ],
            meta: Default::default(),
        }
    }

    fn hall_book() -> Phrasebook {
        let tools = service(
            "FindHalls",
            "BookHall",
            "hall_city",
            "hall_name",
            "number_of_guests",
        );
        let mut convs: Vec<Conversation> = (0..8).map(hall_dialogue).collect();
        // A place with a number is an address: its value is no city to lend.
        let mut pier = hall_dialogue(0);
        for m in &mut pier.messages {
            if let Message::Tool { content, .. } = m {
                *content = content.replace("Paris", "Pier 39");
            }
            if let Message::Assistant { tool_calls, .. } = m {
                for c in tool_calls.iter_mut() {
                    if let Some(v) = c.arguments.get_mut("hall_city") {
                        *v = json!("Pier 39");
                    }
                }
            }
        }
        convs.push(pier);
        // Two more domains that say only common words, so "hall" is rare and "strong" is not.
        let mut others = Vec::new();
        for d in ["Boats_1", "Cabins_1"] {
            let c = Conversation {
                id: d.into(),
                messages: vec![
                    user("Please come strong, we will look at it. Thanks a lot."),
                    say("Sure."),
                ],
                meta: Default::default(),
            };
            others.push((d.to_string(), tools.clone(), vec![c]));
        }
        let mut groups = vec![("Halls_1".to_string(), tools, convs)];
        groups.extend(others);
        Phrasebook::learn(&groups)
    }

    #[test]
    fn phrasings_are_learned_with_typed_slots_and_rare_words() {
        let book = hall_book();
        assert_eq!(book.services["Halls_1"], 9);
        // Values by role: places (no address), names and counts; no category or time.
        assert_eq!(
            book.values[&Role::Place],
            vec!["Lima", "Oslo", "Paris", "Rome"]
        );
        assert_eq!(book.values[&Role::Name].len(), 4);
        assert!(book.values[&Role::Count].contains(&"2".to_string()));
        assert!(!book.values.contains_key(&Role::Time));
        let request = book
            .entries
            .iter()
            .find(|e| e.kind == Kind::Request)
            .expect("the booking request is learned");
        assert_eq!(
            request.text,
            "Reserve it, we will come {number_of_guests} strong at {time}."
        );
        assert_eq!(request.slots["number_of_guests"].role, Role::Count);
        assert_eq!(request.slots["time"].role, Role::Time);
        // "reserve" is said in one domain of three; "it", "strong", "we", "will" in all three.
        assert_eq!(request.rare, vec!["reserve"]);
        let opener = book.entries.iter().find(|e| e.kind == Kind::Opener);
        assert!(opener.is_none_or(|o| !o.text.contains('{')));
    }

    #[test]
    fn a_target_takes_phrasings_whose_slots_map_by_role_and_whose_rare_words_it_says() {
        let book = hall_book();
        // A court-booking target: a count and a time of its own names.
        let target = service(
            "FindCourts",
            "BookCourt",
            "city",
            "court_name",
            "number_of_players",
        );
        let says = |words: &[&str]| words.iter().map(|w| w.to_string()).collect();
        let t = book.for_target(&target, &says(&["reserve"]));
        assert_eq!(
            t.request[&vec!["number_of_players".to_string(), "time".to_string()]],
            vec!["Reserve it, we will come {number_of_players} strong at {time}."]
        );
        // "hall" and "reserve" are rare: a target whose traces never say them takes neither.
        let t = book.for_target(&target, &says(&[]));
        assert!(t.request.is_empty() && t.inform.values().flatten().all(|p| !p.contains("hall")));
        assert!(
            t.thanks.iter().any(|p| p == "Thanks a lot."),
            "{:?}",
            t.thanks
        );
    }

    #[test]
    fn several_target_arguments_of_a_role_take_a_slot_by_name_words_or_not_at_all() {
        let slot = |role, words: &[&str]| Slot {
            role,
            words: words.iter().map(|w| w.to_string()).collect(),
        };
        let target: BTreeMap<String, Slot> = [
            (
                "origin_city".to_string(),
                slot(Role::Place, &["origin", "city"]),
            ),
            (
                "destination_city".to_string(),
                slot(Role::Place, &["destination", "city"]),
            ),
        ]
        .into();
        let one = |name: &str, words: &[&str]| -> BTreeMap<String, Slot> {
            [(name.to_string(), slot(Role::Place, words))].into()
        };
        let mapped = map_slots(&one("from_city", &["origin"]), &target).unwrap();
        assert_eq!(mapped["from_city"], "origin_city");
        assert!(
            map_slots(&one("city", &["city"]), &target).is_none(),
            "a tie"
        );
        assert!(
            map_slots(&one("when", &["when"]), &target).is_none(),
            "no name shared"
        );
        let two: BTreeMap<String, Slot> = [
            ("a".to_string(), slot(Role::Place, &["origin"])),
            ("b".to_string(), slot(Role::Place, &["origin"])),
        ]
        .into();
        assert!(
            map_slots(&two, &target).is_none(),
            "two slots, one argument"
        );
    }

    #[test]
    fn questions_for_anything_else_or_for_values_of_several_roles_are_dropped() {
        let entry = |text: &str, role| Entry {
            kind: Kind::Ask,
            service: "S_1".into(),
            text: text.into(),
            slots: [(
                "x".to_string(),
                Slot {
                    role,
                    words: vec![],
                },
            )]
            .into(),
            rare: vec![],
        };
        let mut book = Phrasebook {
            services: BTreeMap::new(),
            values: BTreeMap::new(),
            entries: vec![
                entry("What time?", Role::Time),
                entry("Can I help with anything else?", Role::Date),
                entry("Which one?", Role::Date),
                entry("which one?", Role::Name),
            ],
        };
        book.drop_generic_questions();
        let kept: Vec<&str> = book.entries.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(kept, vec!["What time?"]);
    }
}
