//! Reply checks that read the dialogue, not only the tool results: whether the reply reports
//! what the latest transaction did, whether the times, dates and counts it states are the ones
//! the user gave (or changed to) or a result returned, whether it answers what the user's
//! latest turn asked for, and whether it asks again for a value the user already gave.
//!
//! Everything comes from the conversation and the tool schema: which functions are transactions
//! (their kind) and what their result means (no record: it failed; a record agreeing with the
//! request: it succeeded), which parameters hold times, dates and counts (their names, values
//! and schema types), which fields a user can ask about (the result records' keys) and which
//! words name a transaction (its function's name). The only word lists here are how English
//! says "booked", "failed", "what" or "sorry".

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::Regex;

use super::{
    find_phrase, find_words, Clause, Fault, Rubric, CONFIRMATION_CUES, FAILURE_PHRASES,
    FIELD_VERBS, NEGATIONS, SUCCESS_PHRASES,
};
use crate::conversation::ToolCall;
use crate::judge::context::{Context, ResultBlock, Speaker};
use crate::judge::normalize::{fold, parse_date, parse_number, parse_time, value_text, ValueKind};
use crate::tools::FunctionKind;
use tracelab_core::text::{find_dates, find_time_readings, identifier_words, words, UNITS};

/// What a stated value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Time,
    Date,
    Count,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Time => "time",
            Kind::Date => "date",
            Kind::Count => "count",
        }
    }
}

/// A time, date or count someone stated, with every plausible reading (minutes of the day,
/// days since the epoch, or the number).
#[derive(Debug, Clone)]
struct Stated {
    kind: Kind,
    readings: Vec<i64>,
    text: String,
}

impl Stated {
    fn matches(&self, other: &Stated) -> bool {
        self.kind == other.kind && self.readings.iter().any(|r| other.readings.contains(r))
    }
}

/// Who stated a value, and at which turn of the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    User,
    Assistant,
    Call,
    Record,
    Default,
}

/// A stated value and where it came from.
#[derive(Debug, Clone)]
struct Mention {
    turn: usize,
    source: Source,
    value: Stated,
}

/// Words that make a bare "today" or "tonight" a date ("for today", "on today", "tonight at");
/// without them it is mostly a pleasantry ("anything else today?").
const DAY_CUES_BEFORE: &[&str] = &["for", "on"];

/// Counts: "for 4", "party of 4", "4 people", and a number before a noun that the schema's
/// count parameters name ("2 tickets" when there is a `number_of_tickets`).
static COUNT_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\b(?:(for)\s+)?(\d{{1,2}}|{})\b(?:\s+([a-z]+))?",
        UNITS[1..=12].join("|")
    ))
    .expect("valid pattern")
});

/// Words after a number that make it part of a time, a money amount or an ordinal, not a count.
const NOT_COUNTED: &[&str] = &[
    "am", "pm", "oclock", "o", "thirty", "fifteen", "forty", "dollars", "percent", "star", "stars",
    "minutes", "minute", "hours", "hour", "more", "other", "of",
];

/// Words that may follow "for 4" without making it a count of something else ("for 4 at 6 pm").
const LINKING: &[&str] = &[
    "at", "on", "in", "for", "and", "to", "this", "next", "tomorrow", "today", "tonight", "please",
    "is", "from", "starting", "with", "then", "that", "so",
];

/// Nouns that count people in any domain.
const PEOPLE: &[&str] = &[
    "people", "persons", "person", "guests", "adults", "group", "party",
];

/// Words that ask for something.
const ASKING: &[&str] = &[
    "what", "whats", "which", "where", "when", "how", "whats", "tell", "give", "know", "find",
    "provide", "share", "is", "are", "do", "does", "can", "could", "would",
];

/// Words that admit not knowing or not having something.
const CANNOT_SAY: &[&str] = &[
    "sorry",
    "unfortunately",
    // "I don't have that (information)"; "they don't have live music" answers another question.
    "dont have that",
    "dont have this",
    "dont have the",
    "dont have any",
    "dont have information",
    "do not have that",
    "do not have the",
    "do not have any",
    "not available",
    "no information",
    "unable",
    "cannot",
    "cant",
    "not sure",
    "dont know",
];

/// Words of a field's name that make it the answer to "where" (an address, a location).
const WHERE_FIELD_WORDS: &[&str] = &["address", "location", "located", "street", "where"];

/// How English closes a conversation. A reply made of these (and a few words around them)
/// says nothing else.
const CLOSINGS: &[&str] = &[
    "good day",
    "great day",
    "nice day",
    "wonderful day",
    "fantastic day",
    "good night",
    "goodbye",
    "bye",
    "youre welcome",
    "you are welcome",
    "take care",
    "enjoy your meal",
    "enjoy your day",
    "enjoy",
];

/// Words a user ends a conversation with, or declines more help with.
const USER_CLOSINGS: &[&str] = &[
    "thanks",
    "thank",
    "appreciate",
    "bye",
    "goodbye",
    "no",
    "nope",
    "nothing",
    "thats all",
    "that is all",
    "all set",
    "that will be all",
];

/// Words that report a transaction's success without the phrases of [`SUCCESS_PHRASES`].
const REPORTED: &[&str] = &[
    "is set",
    "are set",
    "been set",
    "done",
    "secured",
    "complete",
    "completed",
];

/// Words of a field name too generic to stand for the field alone ("phone number" is asked as
/// "phone", never as "number").
const GENERIC_FIELD_WORDS: &[&str] = &[
    "number", "range", "name", "type", "id", "of", "the", "a", "info", "size", "level",
];

impl Rubric<'_> {
    /// The dialogue checks, each problem with its class; `reference` is the reference reply
    /// (what it states was right at this point).
    pub(super) fn check_dialogue(
        &self,
        ctx: &Context,
        message: &str,
        clauses: &[Clause],
        reference: &str,
    ) -> Vec<(Fault, String)> {
        let timeline = self.timeline(ctx);
        let mut out = Vec::new();
        out.extend(self.check_reported(ctx, message, clauses));
        out.extend(self.check_stated_values(ctx, message, &timeline, reference));
        out.extend(self.check_answers_request(ctx, message));
        out.extend(self.check_asks_again(ctx, message, &timeline));
        out.extend(self.check_repeats(ctx, message));
        out.extend(self.check_takes_given_values(ctx, message, &timeline));
        out.extend(self.check_takes_transaction_request(ctx, message));
        out.extend(self.check_proposes_declined(ctx, message));
        out
    }

    /// The user just declined what the previous reply proposed ("No, I don't want that.") and
    /// gave no value of their own: a reply that proposes or asks to confirm again only times,
    /// dates or counts of the declined proposal contradicts them ("Please confirm: 17:30" after
    /// "how about 5:30 pm instead?" was refused). A new value, or none, is not this fault.
    fn check_proposes_declined(&self, ctx: &Context, message: &str) -> Option<(Fault, String)> {
        let (user, earlier) = ctx.turns.split_last()?;
        let first = fold(&user.text);
        let first = first.split(' ').next().unwrap_or("");
        if user.speaker != Speaker::User || !matches!(first, "no" | "nope" | "nah") {
            return None;
        }
        let nouns = self.count_nouns();
        if !self.stated_in(&user.text, &nouns).is_empty() {
            return None;
        }
        let proposal = earlier
            .iter()
            .rev()
            .find(|t| t.speaker != Speaker::Tool)
            .filter(|t| t.speaker == Speaker::Assistant && t.call.is_none())?;
        let declined = self.stated_in(&proposal.text, &nouns);
        let stated = self.stated_in(message, &nouns);
        let reply_words = fold(message);
        let proposes = message.contains('?')
            || reply_words
                .split(' ')
                .any(|w| CONFIRMATION_CUES.contains(&w));
        let again =
            !stated.is_empty() && stated.iter().all(|s| declined.iter().any(|d| s.matches(d)));
        (proposes && again).then(|| {
            (
                Fault::ContradictsUser,
                format!(
                    "proposes again {:?}, which the user just declined",
                    stated[0].text
                ),
            )
        })
    }

    /// A reply that gives two of the user's values each the other's place: where the reference
    /// says "at Ariake in San Jose", "at San Jose in Ariake". The values are the reference's
    /// capitalized phrases that a user turn, a call or a record also holds; a value's place is
    /// the word before it. Only an exact exchange of places counts, which a paraphrase that
    /// reorders the sentence does not make.
    pub(super) fn check_swapped(
        &self,
        ctx: &Context,
        reference: &str,
        message: &str,
    ) -> Option<(Fault, String)> {
        let known: Vec<Vec<String>> = ctx
            .turns
            .iter()
            .filter(|t| t.speaker != Speaker::Assistant || t.call.is_some())
            .map(|t| match &t.call {
                Some(c) => words(
                    &c.arguments
                        .values()
                        .map(value_text)
                        .collect::<Vec<_>>()
                        .join(" . "),
                ),
                None => words(&t.text),
            })
            .collect();
        let (ref_words, pred_words) = (words(reference), words(message));
        fn strs(ws: &[String]) -> Vec<&str> {
            ws.iter().map(String::as_str).collect()
        }
        let (ref_words, pred_words) = (strs(&ref_words), strs(&pred_words));
        let known: Vec<Vec<&str>> = known.iter().map(|k| strs(k)).collect();
        // The word before the first place the phrase is said, when it has one.
        let place = |ws: &[&str], p: &[&str]| {
            find_words(ws, p)
                .filter(|&i| i > 0)
                .map(|i| ws[i - 1].to_string())
        };
        let placed: Vec<(String, String, String)> = capitalized_phrases(reference)
            .iter()
            .map(|p| words(p))
            .filter_map(|p| {
                let p = strs(&p);
                known.iter().find(|k| find_words(k, &p).is_some())?;
                Some((p.join(" "), place(&ref_words, &p)?, place(&pred_words, &p)?))
            })
            .collect();
        for (i, (a, ra, pa)) in placed.iter().enumerate() {
            for (b, rb, pb) in &placed[i + 1..] {
                if ra != rb && pa == rb && pb == ra && a != b {
                    return Some((
                        Fault::ContradictsUser,
                        format!("puts {a:?} where {b:?} belongs and {b:?} where {a:?} belongs"),
                    ));
                }
            }
        }
        None
    }

    /// A reply that only closes the conversation ("Have a good day.") where the reference goes
    /// on and the user did not close: it leaves the user's latest turn unanswered.
    pub(super) fn check_closing(
        &self,
        ctx: &Context,
        reference: &str,
        message: &str,
    ) -> Option<(Fault, String)> {
        let last = ctx.turns.last()?;
        if last.speaker != Speaker::User || !is_closing(message) || is_closing(reference) {
            return None;
        }
        let uw = words(&last.text);
        let uw: Vec<&str> = uw.iter().map(String::as_str).collect();
        if USER_CLOSINGS.iter().any(|p| find_phrase(&uw, p).is_some()) {
            return None;
        }
        Some((
            Fault::IgnoresRequest,
            "closes the conversation, leaving the user's latest turn unanswered".into(),
        ))
    }

    /// Right after a transaction whose result does not say what happened (a record that
    /// differs from the request: SGD books a nearby time), the reference says it: a reply that
    /// reports the other outcome is false, one that reports none misses it.
    pub(super) fn check_outcome_as_referenced(
        &self,
        ctx: &Context,
        reference: &str,
        message: &str,
    ) -> Option<(Fault, String)> {
        if !ctx.ends_with_result() {
            return None;
        }
        let block = ctx.results.last()?;
        let call = block.call.as_ref()?;
        if !self.is_transaction(&call.name) || self.transaction_outcome(block).is_some() {
            return None;
        }
        let said = reported(reference)?;
        match reported(message) {
            Some(p) if p == said => None,
            Some(_) => Some((
                Fault::FalseOutcome,
                format!(
                    "reports the {} {} where it {}",
                    call.name,
                    if said { "failed" } else { "succeeded" },
                    if said { "succeeded" } else { "failed" }
                ),
            )),
            None => Some((
                Fault::MissedOutcome,
                format!("does not say what the {} did", call.name),
            )),
        }
    }

    /// Right after a search returned results that the reference presents by name, a reply
    /// that names none of them, gives no count and asks nothing leaves them unpresented
    /// ("There is a nice restaurant in San Francisco.").
    pub(super) fn check_presents_results(
        &self,
        ctx: &Context,
        reference: &str,
        message: &str,
    ) -> Option<(Fault, String)> {
        if !ctx.ends_with_result() || message.contains('?') {
            return None;
        }
        let block = ctx.results.last()?;
        let call = block.call.as_ref()?;
        if self.is_transaction(&call.name) || block.records.is_empty() {
            return None;
        }
        let names: Vec<Vec<String>> = block
            .records
            .iter()
            .flat_map(|r| r.iter())
            .filter(|(k, _)| k.to_lowercase().contains("name"))
            .map(|(_, v)| words(&value_text(v)))
            .filter(|w| !w.is_empty())
            .collect();
        let names_one = |text: &str| {
            let ws = words(text);
            let ws: Vec<&str> = ws.iter().map(String::as_str).collect();
            names.iter().any(|n| {
                let n: Vec<&str> = n.iter().map(String::as_str).collect();
                find_words(&ws, &n[..n.len().min(2)]).is_some()
            })
        };
        let counts = !numbers_in(message).is_empty();
        (names_one(reference) && !names_one(message) && !counts).then(|| {
            (
                Fault::IgnoresRequest,
                format!("presents none of the {} results by name", call.name),
            )
        })
    }

    // ---- What a transaction did ----------------------------------------------------------------

    /// Whether `block` (a transaction's result) says it succeeded: `Some(false)` for no record,
    /// `Some(true)` for a record agreeing with every argument, `None` otherwise (SGD sometimes
    /// books a nearby time).
    pub(super) fn transaction_outcome(&self, block: &ResultBlock) -> Option<bool> {
        let call = block.call.as_ref()?;
        if block.records.is_empty() {
            return Some(false);
        }
        block
            .records
            .iter()
            .any(|r| {
                call.arguments.iter().all(|(k, v)| {
                    r.get(k)
                        .is_none_or(|rv| self.norm.same(k, &value_text(rv), &value_text(v)))
                })
            })
            .then_some(true)
    }

    /// Whether `name` is a transaction function.
    pub(super) fn is_transaction(&self, name: &str) -> bool {
        self.tools
            .get(name)
            .is_some_and(|f| f.kind == FunctionKind::Transaction)
    }

    /// Words that put a clause on the subject of a transaction: how English says booking and
    /// buying, plus the words of the transaction functions' names (`BuyMovieTickets` → "buy",
    /// "movie", "tickets").
    pub(super) fn transaction_words(&self) -> BTreeSet<String> {
        let mut words: BTreeSet<String> = [
            "reservation",
            "reservations",
            "booking",
            "bookings",
            "book",
            "booked",
            "reserve",
            "reserved",
            "purchase",
            "purchased",
            "bought",
            "order",
            "ordered",
            "scheduled",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        // The thing a search finds too ("restaurant" of FindRestaurants) is no word of the
        // transaction: "I found 1 restaurant" reports no booking.
        let searched: BTreeSet<String> = self
            .tools
            .functions
            .iter()
            .filter(|f| f.kind != FunctionKind::Transaction)
            .flat_map(|f| identifier_words(&f.name))
            .flat_map(|w| [w.trim_end_matches('s').to_string(), w])
            .collect();
        for f in self.tools.of_kind(FunctionKind::Transaction) {
            for w in identifier_words(&f.name) {
                if w.len() >= 3 && !searched.contains(&w) {
                    words.insert(format!("{w}s"));
                    words.insert(w);
                }
            }
        }
        words
    }

    /// Right after a transaction returned, the reply must say what happened.
    fn check_reported(
        &self,
        ctx: &Context,
        message: &str,
        clauses: &[Clause],
    ) -> Option<(Fault, String)> {
        if !ctx.ends_with_result() {
            return None;
        }
        let block = ctx.results.last()?;
        let call = block.call.as_ref()?;
        if !self.is_transaction(&call.name) {
            return None;
        }
        let outcome = self.transaction_outcome(block)?;
        let f = fold(message);
        let ws: Vec<&str> = f.split(' ').collect();
        let has = |phrases: &[&str]| phrases.iter().any(|p| find_phrase(&ws, p).is_some());
        let txn_words = self.transaction_words();
        let mentions_txn = clauses
            .iter()
            .any(|c| c.words.iter().any(|w| txn_words.contains(w)));
        let reported = if outcome {
            has(SUCCESS_PHRASES) || has(REPORTED) || mentions_txn
        } else {
            has(FAILURE_PHRASES) || has(CANNOT_SAY) || ws.iter().any(|w| NEGATIONS.contains(w))
        };
        (!reported).then(|| {
            (
                Fault::MissedOutcome,
                format!(
                    "does not say that {} {}",
                    call.name,
                    if outcome {
                        "succeeded"
                    } else {
                        "failed (it returned no record)"
                    }
                ),
            )
        })
    }

    // ---- Times, dates and counts --------------------------------------------------------------

    /// Parameters (of any function) holding values of `kind`.
    fn params_of(&self, kind: Kind) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for f in &self.tools.functions {
            for p in f.parameter_names() {
                if self.param_kind(f.name.as_str(), p) == Some(kind) {
                    out.insert(p.to_string());
                }
            }
        }
        out
    }

    /// The kind of a parameter: by its name (`*time*`, `*date*`) or its schema (a number type,
    /// or an enum of numbers: a count).
    fn param_kind(&self, function: &str, param: &str) -> Option<Kind> {
        let p = param.to_lowercase();
        if p.contains("date") {
            return Some(Kind::Date);
        }
        if p.contains("time") {
            return Some(Kind::Time);
        }
        let f = self.tools.get(function)?;
        let schema = f.parameter(param)?;
        let numeric_type = schema
            .get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t == "integer" || t == "number");
        let numeric_enum = f.enum_values(param).is_some_and(|vs| {
            let vs: Vec<&str> = vs
                .into_iter()
                .filter(|v| !matches!(fold(v).as_str(), "dontcare" | "dont care"))
                .collect();
            !vs.is_empty() && vs.iter().all(|v| v.trim().parse::<u32>().is_ok())
        });
        (numeric_type || numeric_enum).then_some(Kind::Count)
    }

    /// Nouns that count what a count parameter counts (`number_of_tickets` → "tickets",
    /// "ticket"), plus the words English counts people with.
    fn count_nouns(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = PEOPLE.iter().map(|s| s.to_string()).collect();
        for f in &self.tools.functions {
            for p in f.parameter_names() {
                if self.param_kind(&f.name, p) != Some(Kind::Count) {
                    continue;
                }
                for w in identifier_words(p) {
                    if w.len() >= 3 && !GENERIC_FIELD_WORDS.contains(&w.as_str()) && w != "party" {
                        out.insert(w.trim_end_matches('s').to_string());
                        out.insert(format!("{}s", w.trim_end_matches('s')));
                    }
                }
            }
        }
        out
    }

    /// Whether a text states a time, a date or a count.
    pub(super) fn states_time_date_or_count(&self, text: &str) -> bool {
        !self.stated_in(text, &self.count_nouns()).is_empty()
    }

    /// The times, dates and counts a text states.
    fn stated_in(&self, text: &str, nouns: &BTreeSet<String>) -> Vec<Stated> {
        let mut out = Vec::new();
        let mut taken: Vec<std::ops::Range<usize>> = Vec::new();
        for (r, readings) in find_time_readings(text) {
            out.push(Stated {
                kind: Kind::Time,
                readings: readings.into_iter().map(i64::from).collect(),
                text: text[r.clone()].to_string(),
            });
            taken.push(r);
        }
        for (r, _) in find_dates(text, self.norm.today) {
            let said = &text[r.clone()];
            if is_pleasantry_day(text, &r) {
                continue;
            }
            // Every reading, not only the finder's one: "Friday" may be today or in a week.
            let readings: Vec<i64> = parse_date(said, self.norm.today)
                .into_iter()
                .map(|d| d.days())
                .collect();
            if !readings.is_empty() {
                out.push(Stated {
                    kind: Kind::Date,
                    readings,
                    text: said.to_string(),
                });
                taken.push(r);
            }
        }
        for c in COUNT_RE.captures_iter(text) {
            let (whole, number) = (c.get(0).expect("match"), c.get(2).expect("number"));
            if taken
                .iter()
                .any(|r| r.start < whole.end() && number.start() < r.end)
            {
                continue;
            }
            // "7:30", "2.5", "$20", "#3": the number is part of something else.
            let before = text[..number.start()].chars().next_back();
            let after = text[number.end()..].chars().next();
            if before.is_some_and(|ch| "$#:.-/".contains(ch))
                || after.is_some_and(|ch| {
                    ":.-/%".contains(ch)
                        && text[number.end() + 1..].starts_with(|x: char| x.is_ascii_digit())
                })
            {
                continue;
            }
            let next = c.get(3).map(|n| n.as_str().to_lowercase());
            // "a group of three", "a party of 4", "4 of us": counts of people.
            let before: Vec<String> = words(&text[..number.start()]);
            let of_people = before.len() >= 2
                && before[before.len() - 1] == "of"
                && (PEOPLE.contains(&before[before.len() - 2].as_str())
                    || nouns.contains(&before[before.len() - 2]));
            let of_us = next.as_deref() == Some("of")
                && text[number.end()..]
                    .trim_start()
                    .to_lowercase()
                    .starts_with("of us");
            if next.as_deref().is_some_and(|n| NOT_COUNTED.contains(&n)) && !of_us {
                continue;
            }
            // "for 4" counts; "for one table" counts tables, which no count parameter names.
            let counted = match next.as_deref() {
                _ if of_people || of_us => true,
                Some(n) if nouns.contains(n) => true,
                Some(n) if !LINKING.contains(&n) => false,
                _ => c.get(1).is_some(),
            };
            let Some(n) = parse_number(number.as_str()) else {
                continue;
            };
            if counted && n >= 1.0 {
                out.push(Stated {
                    kind: Kind::Count,
                    readings: vec![n as i64],
                    text: whole.as_str().trim().to_string(),
                });
                taken.push(whole.range());
            }
        }
        out.extend(self.labelled_counts(text, &taken));
        out
    }

    /// Counts a text labels with a count parameter's words: "party size 18", "number of
    /// adults: three" (a confirmation that lists the arguments).
    fn labelled_counts(&self, text: &str, taken: &[std::ops::Range<usize>]) -> Vec<Stated> {
        let patterns = self.count_labels.get_or_init(|| {
            self.params_of(Kind::Count)
                .iter()
                .filter_map(|param| {
                    let phrase = identifier_words(param)
                        .iter()
                        .map(|w| regex::escape(w))
                        .collect::<Vec<_>>()
                        .join(r"\W+");
                    Regex::new(&format!(
                        r"(?i)\b{phrase}\W{{0,4}}(?:is\s+|of\s+)?(\d{{1,3}}|{})\b",
                        UNITS[1..].join("|")
                    ))
                    .ok()
                })
                .collect()
        });
        let mut out = Vec::new();
        for re in patterns {
            for c in re.captures_iter(text) {
                let (whole, number) = (c.get(0).expect("match"), c.get(1).expect("number"));
                if taken
                    .iter()
                    .any(|r| r.start < number.end() && number.start() < r.end)
                {
                    continue;
                }
                if let Some(n) = parse_number(number.as_str()).filter(|n| *n >= 1.0) {
                    out.push(Stated {
                        kind: Kind::Count,
                        readings: vec![n as i64],
                        text: whole.as_str().to_string(),
                    });
                }
            }
        }
        out
    }

    /// A call argument or record field value as a stated value, by its parameter's kind.
    fn stated_value(&self, function: Option<&str>, key: &str, value: &str) -> Option<Stated> {
        let kind = match function.and_then(|f| self.param_kind(f, key)) {
            Some(k) => k,
            None => match self.norm.kind_of(key, value) {
                ValueKind::Date => Kind::Date,
                ValueKind::Time => Kind::Time,
                ValueKind::Number => Kind::Count,
                _ => return None,
            },
        };
        let readings: Vec<i64> = match kind {
            Kind::Time => parse_time(value).into_iter().map(i64::from).collect(),
            Kind::Date => parse_date(value, self.norm.today)
                .into_iter()
                .map(|d| d.days())
                .collect(),
            // A rating of 4.6 is no count of 4.
            Kind::Count => parse_number(value)
                .filter(|n| n.fract() == 0.0)
                .map(|n| n as i64)
                .into_iter()
                .collect(),
        };
        (!readings.is_empty()).then(|| Stated {
            kind,
            readings,
            text: value.to_string(),
        })
    }

    /// Every time, date and count of the prefix, in order: said by the user or the assistant,
    /// passed in a call, returned in a record, or a schema default.
    fn timeline(&self, ctx: &Context) -> Vec<Mention> {
        let nouns = self.count_nouns();
        let mut out = Vec::new();
        for f in &self.tools.functions {
            for p in f.parameter_names() {
                let default = f
                    .parameter(p)
                    .and_then(|s| s.get("default"))
                    .map(value_text);
                if let Some(v) = default.and_then(|d| self.stated_value(Some(&f.name), p, &d)) {
                    out.push(Mention {
                        turn: 0,
                        source: Source::Default,
                        value: v,
                    });
                }
            }
        }
        for (i, t) in ctx.turns.iter().enumerate() {
            let source = match t.speaker {
                Speaker::User => Source::User,
                Speaker::Assistant => Source::Assistant,
                _ => continue,
            };
            for v in self.stated_in(&t.text, &nouns) {
                out.push(Mention {
                    turn: i,
                    source,
                    value: v,
                });
            }
            if let Some(call) = &t.call {
                for (k, v) in &call.arguments {
                    if let Some(s) = self.stated_value(Some(&call.name), k, &value_text(v)) {
                        out.push(Mention {
                            turn: i,
                            source: Source::Call,
                            value: s,
                        });
                    }
                }
            }
        }
        for b in &ctx.results {
            let function = b.call.as_ref().map(|c| c.name.as_str());
            for r in &b.records {
                for (k, v) in r {
                    if let Some(s) = self.stated_value(function, k, &value_text(v)) {
                        out.push(Mention {
                            turn: b.turn,
                            source: Source::Record,
                            value: s,
                        });
                    }
                }
            }
        }
        out
    }

    /// Whether some user or assistant turn from `from` on says `v` in any words: every span of
    /// up to five words is read as a time, a date or a number ("5 o'clock in the evening",
    /// "we are three"), more leniently than a reply's own statements are found.
    fn said_in_turns(&self, ctx: &Context, v: &Stated, from: usize) -> bool {
        ctx.turns.iter().enumerate().skip(from).any(|(_, t)| {
            if !matches!(t.speaker, Speaker::User | Speaker::Assistant) {
                return false;
            }
            let ws: Vec<&str> = t
                .text
                .split_whitespace()
                .map(|w| w.trim_matches(|c: char| ",.!?;\"()".contains(c)))
                .collect();
            (0..ws.len()).any(|i| {
                (1..=5.min(ws.len() - i)).any(|n| {
                    let span = ws[i..i + n].join(" ");
                    let readings: Vec<i64> = match v.kind {
                        Kind::Time => parse_time(&span).into_iter().map(i64::from).collect(),
                        Kind::Date => parse_date(&span, self.norm.today)
                            .into_iter()
                            .map(|d| d.days())
                            .collect(),
                        Kind::Count => parse_number(&span)
                            .filter(|x| x.fract() == 0.0)
                            .map(|x| x as i64)
                            .into_iter()
                            .collect(),
                    };
                    readings.iter().any(|r| v.readings.contains(r))
                })
            })
        })
    }

    /// The user's latest turn gave times, dates or counts: a reply that asks nothing, does not
    /// close and states none of them ignores what the user just said ("You're an Indian
    /// restaurant." after "11 in the morning, for 2 people").
    fn check_takes_given_values(
        &self,
        ctx: &Context,
        message: &str,
        timeline: &[Mention],
    ) -> Option<(Fault, String)> {
        let last = ctx.turns.len().checked_sub(1)?;
        // A confirmation that leaves a value out asks the user to check it: not ignoring.
        if ctx.turns[last].speaker != Speaker::User || asks_confirms_or_closes(message) {
            return None;
        }
        let given: Vec<&Stated> = timeline
            .iter()
            .filter(|m| m.turn == last && m.source == Source::User)
            .map(|m| &m.value)
            .collect();
        let first = given.first()?;
        let stated = self.stated_in(&mask_names(ctx, message), &self.count_nouns());
        if stated
            .iter()
            .any(|s| given.iter().any(|g| g.matches(s)) || self.said_in_turns(ctx, s, last))
        {
            return None;
        }
        Some((
            Fault::IgnoresRequest,
            format!(
                "says nothing of the {} the user just gave ({:?}) and asks nothing",
                first.kind.noun(),
                first.text
            ),
        ))
    }

    /// The user's latest turn asks for a transaction (its words: "make a reservation"): a
    /// reply that neither asks, confirms, reports nor declines, and says nothing of it, ignores
    /// the request ("You're an Take-out restaurant.").
    fn check_takes_transaction_request(
        &self,
        ctx: &Context,
        message: &str,
    ) -> Option<(Fault, String)> {
        let last = ctx.turns.last()?;
        if last.speaker != Speaker::User {
            return None;
        }
        let txn = self.transaction_words();
        let uw = words(&last.text);
        let requested = uw.iter().find(|w| txn.contains(*w))?;
        let ws = words(message);
        let wr: Vec<&str> = ws.iter().map(String::as_str).collect();
        let engages = asks_confirms_or_closes(message)
            || ws.iter().any(|w| txn.contains(w))
            || CANNOT_SAY.iter().any(|p| find_phrase(&wr, p).is_some())
            || reported(message).is_some();
        (!engages).then(|| {
            (
                Fault::IgnoresRequest,
                format!("says nothing of the {requested:?} the user asked for and asks nothing"),
            )
        })
    }

    /// Each time, date and count the reply states must be one somebody gave; where the schema
    /// has one parameter of that kind, it must not be one the user has since changed.
    fn check_stated_values(
        &self,
        ctx: &Context,
        message: &str,
        timeline: &[Mention],
        reference: &str,
    ) -> Option<(Fault, String)> {
        let nouns = self.count_nouns();
        // What the reference states was right at this point (SGD's replies state a default
        // party size nobody said): the same value in the reply is too, another one is not.
        let referenced = self.stated_in(&mask_names(ctx, reference), &nouns);
        for v in self.stated_in(&mask_names(ctx, message), &nouns) {
            if referenced.iter().any(|r| r.matches(&v)) {
                continue;
            }
            let known: Vec<&Mention> = timeline.iter().filter(|m| m.value.matches(&v)).collect();
            if known.is_empty() && !self.said_in_turns(ctx, &v, 0) {
                return Some((
                    Fault::UnfoundedValues,
                    format!(
                        "states the {} {:?}, which nobody gave in the conversation",
                        v.kind.noun(),
                        v.text
                    ),
                ));
            }
            if self.params_of(v.kind).len() != 1 {
                continue;
            }
            // The user's latest statement of this kind, and everything since, is current.
            let Some(latest) = timeline
                .iter()
                .filter(|m| m.source == Source::User && m.value.kind == v.kind)
                .map(|m| m.turn)
                .max()
            else {
                continue;
            };
            let current =
                known.iter().any(|m| m.turn >= latest) || self.said_in_turns(ctx, &v, latest);
            // A schema default the user has since overridden is no longer current either.
            if !current {
                let now: Vec<&str> = timeline
                    .iter()
                    .filter(|m| {
                        m.turn == latest && m.source == Source::User && m.value.kind == v.kind
                    })
                    .map(|m| m.value.text.as_str())
                    .collect();
                return Some((
                    Fault::ContradictsUser,
                    format!(
                        "states the {} {:?}, but the user has since said {:?}",
                        v.kind.noun(),
                        v.text,
                        now.join(", ")
                    ),
                ));
            }
        }
        None
    }

    // ---- What the user asked for -------------------------------------------------------------

    /// Phrases a user asks about a record field with: its name's words without a leading verb
    /// (`phone_number` → "phone number"; `has_live_music` → "live music"), the task's synonyms of
    /// that phrase, and each word of it that names this field alone (not "number", not a word
    /// of another field or of a function name: "phone", "address").
    fn field_phrases(&self, field: &str, fields: &BTreeSet<String>) -> Vec<String> {
        let words = identifier_words(field);
        let start = words
            .iter()
            .position(|w| !FIELD_VERBS.contains(&w.as_str()))
            .unwrap_or(0);
        let topic: Vec<&str> = words[start..].iter().map(String::as_str).collect();
        let mut out = self.norm.synonyms.phrases_for(&topic.join(" "));
        if topic.len() > 1 {
            let params = self
                .tools
                .functions
                .iter()
                .flat_map(|f| f.parameter_names().into_iter().map(String::from));
            let elsewhere: BTreeSet<String> = fields
                .iter()
                .map(|f| f.to_string())
                .chain(params)
                .filter(|f| f.as_str() != field)
                .flat_map(|f| identifier_words(&f))
                .chain(
                    self.tools
                        .functions
                        .iter()
                        .flat_map(|f| identifier_words(&f.name)),
                )
                .collect();
            for w in &topic {
                if w.len() >= 4 && !GENERIC_FIELD_WORDS.contains(w) && !elsewhere.contains(*w) {
                    out.push(w.to_string());
                }
            }
        }
        out
    }

    /// Fields of the results a user asks about (not names: a reply names what it talks about
    /// anyway), and every field the results have.
    fn askable_fields(&self, ctx: &Context) -> (BTreeSet<String>, BTreeSet<String>) {
        let all: BTreeSet<String> = ctx.records().flat_map(|r| r.keys().cloned()).collect();
        // A parameter's field is askable too ("is there live music?" about a result), but only
        // in a question: a request stating it as a criterion has no question about it.
        let askable = all
            .iter()
            .filter(|k| !k.to_lowercase().contains("name"))
            .cloned()
            .collect();
        (askable, all)
    }

    /// When the user's latest turn asks for a field of the results ("what is their phone
    /// number?"), the reply must give it, talk about it, or say it cannot.
    fn check_answers_request(&self, ctx: &Context, message: &str) -> Option<(Fault, String)> {
        // The user's latest turn, past the service calls and results since: "Yes, book it. Do
        // they serve alcohol?" is answered by the reply that reports the booking (the labelling
        // guide's rule since session 35).
        let last = ctx.turns.iter().rev().find(|t| {
            !(t.speaker == Speaker::Tool || t.speaker == Speaker::Assistant && t.call.is_some())
        })?;
        if last.speaker != Speaker::User {
            return None;
        }
        let questions = questions_of(&last.text);
        if questions.is_empty() {
            return None;
        }
        let reply = fold(message);
        let rw: Vec<&str> = reply.split(' ').collect();
        // "Sorry, I don't know": saying it cannot answer is an answer. A bare "no" is one only
        // to a yes/no question (below).
        if CANNOT_SAY.iter().any(|p| find_phrase(&rw, p).is_some()) {
            return None;
        }
        let numbers: Vec<f64> = numbers_in(message);
        let stated = self.stated_in(message, &BTreeSet::new());
        let (fields, all_fields) = self.askable_fields(ctx);
        let mut asked: Vec<(String, &String)> = Vec::new();
        let mut named_a_field = false;
        for field in &fields {
            let phrases = self.field_phrases(field, &all_fields);
            // "Where is it?" asks for a field that says where.
            let says_where = identifier_words(field)
                .iter()
                .any(|w| WHERE_FIELD_WORDS.contains(&w.as_str()));
            let in_question = questions.iter().any(|q| {
                let qw: Vec<&str> = q.split(' ').collect();
                phrases.iter().any(|p| find_phrase(&qw, p).is_some())
                    || (says_where && qw.first() == Some(&"where"))
            });
            if !in_question {
                continue;
            }
            named_a_field = true;
            let mentioned = phrases.iter().any(|p| find_phrase(&rw, p).is_some());
            let values: Vec<String> = ctx
                .records()
                .filter_map(|r| r.get(field.as_str()))
                .map(value_text)
                .collect();
            let boolean = values
                .iter()
                .any(|v| matches!(fold(v).as_str(), "true" | "false"));
            let yes_no = rw.iter().any(|w| {
                matches!(*w, "yes" | "yeah" | "yep" | "sure" | "does" | "do")
                    || NEGATIONS.contains(w)
            });
            let gives_value = ctx
                .records()
                .filter_map(|r| r.get(field.as_str()))
                .any(|v| self.reply_gives(v, field, &rw, &numbers, &stated));
            // A question naming several fields is answered by answering one of them: which
            // field "when does it arrive at the destination" asks for is not always clear.
            if mentioned || gives_value || (boolean && yes_no) {
                return None;
            }
            asked.push((phrases[0].clone(), field));
        }
        // A reply giving some other field's value of the results answers something the user
        // may have meant ("the arrival airport" is a destination airport, not an arrival time).
        // Only result facts count here: a search criterion (the city) is no answer.
        let criteria: BTreeSet<&str> = self
            .tools
            .functions
            .iter()
            .flat_map(|f| f.parameter_names())
            .collect();
        let gives_other = fields
            .iter()
            .filter(|f| !criteria.contains(f.as_str()))
            .any(|f| {
                ctx.records()
                    .filter_map(|r| r.get(f.as_str()))
                    .any(|v| self.reply_gives(v, f, &rw, &numbers, &stated))
            });
        if gives_other {
            return None;
        }
        if let Some((phrase, field)) = asked.first() {
            return Some((
                Fault::IgnoresRequest,
                format!("does not answer the user's question about the {phrase} ({field})"),
            ));
        }
        // A question asked with the confirmation of a transaction that then returned its record
        // is a question about what was booked, even in words no field has ("Can I have their
        // contact number?", "Is a band playing that night?"): the reply reporting the booking
        // must talk about one of the record's facts the confirmation did not fix (by value or
        // by its field's words) or say it cannot.
        let call = self.confirmed_transaction_returned(ctx)?;
        if named_a_field {
            return None;
        }
        let answered = fields
            .iter()
            .filter(|f| !call.arguments.contains_key(f.as_str()))
            .any(|f| {
                let mut values = ctx.records().filter_map(|r| r.get(f.as_str()));
                values.any(|v| self.reply_gives(v, f, &rw, &numbers, &stated))
                    || self
                        .field_phrases(f, &all_fields)
                        .iter()
                        .any(|p| find_phrase(&rw, p).is_some())
            });
        (!answered).then(|| {
            (
                Fault::IgnoresRequest,
                format!(
                    "reports the {} but not what was asked with its confirmation ({:?})",
                    call.name, questions[0]
                ),
            )
        })
    }

    /// The transaction whose result, holding a record, ends the prefix, when it was called
    /// right after the user's latest turn (the turn that confirmed it).
    fn confirmed_transaction_returned<'c>(&self, ctx: &'c Context) -> Option<&'c ToolCall> {
        let block = ctx.results.last()?;
        let call = block.call.as_ref()?;
        let called_after_user = ctx.turns[..block.turn]
            .iter()
            .rev()
            .find(|t| t.speaker != Speaker::Tool && t.call.is_none())
            .is_some_and(|t| t.speaker == Speaker::User);
        (ctx.ends_with_result()
            && !block.records.is_empty()
            && called_after_user
            && self.is_transaction(&call.name))
        .then_some(call)
    }

    /// Whether a reply (folded words `rw`, its digit numbers and stated values) gives the
    /// record value `v` of `field`: the same time or date, the same number, or its first words.
    fn reply_gives(
        &self,
        v: &serde_json::Value,
        field: &str,
        rw: &[&str],
        numbers: &[f64],
        stated: &[Stated],
    ) -> bool {
        let v = value_text(v);
        if matches!(fold(&v).as_str(), "true" | "false" | "") {
            return false;
        }
        if self
            .stated_value(None, field, &v)
            .is_some_and(|t| t.kind != Kind::Count && stated.iter().any(|s| s.matches(&t)))
        {
            return true;
        }
        let vw = fold(&v);
        let vw: Vec<&str> = vw.split(' ').collect();
        let head = &vw[..vw.len().min(2)];
        let as_number = numbers_in(&v);
        (!head.is_empty() && find_words(rw, head).is_some())
            || (as_number.len() == 1 && numbers.contains(&as_number[0]))
    }

    /// A reply that asks for a parameter's value the user already gave (and did not just
    /// bring up again) asks needlessly.
    fn check_asks_again(
        &self,
        ctx: &Context,
        message: &str,
        timeline: &[Mention],
    ) -> Option<(Fault, String)> {
        let questions = questions_of(message);
        if questions.is_empty() {
            return None;
        }
        let last_user = ctx
            .turns
            .iter()
            .rev()
            .find(|t| t.speaker == Speaker::User)
            .map(|t| fold(&t.text))
            .unwrap_or_default();
        let lw: Vec<&str> = last_user.split(' ').collect();
        let mut asked_params: BTreeSet<(String, String)> = BTreeSet::new();
        for f in &self.tools.functions {
            if f.kind == FunctionKind::Respond {
                continue;
            }
            for p in f.parameter_names() {
                let phrase = identifier_words(p).join(" ");
                let place = self.is_place_param(p);
                let asks = questions.iter().any(|q| {
                    let qw: Vec<&str> = q.split(' ').collect();
                    // "what time", "which city", "what is the date": the phrase right after a
                    // question word (or one word later); a place also as "which city",
                    // whatever the parameter's name.
                    let after_question = |i: usize| {
                        (i.saturating_sub(3)..i)
                            .any(|j| matches!(qw[j], "what" | "which" | "whats" | "where"))
                    };
                    find_phrase(&qw, &phrase).is_some_and(after_question)
                        || (place
                            && PLACE_NOUNS
                                .iter()
                                .filter_map(|n| find_phrase(&qw, n))
                                .any(after_question))
                });
                if asks && find_phrase(&lw, &phrase).is_none() {
                    asked_params.insert((f.name.clone(), p.to_string()));
                }
            }
        }
        for (function, param) in asked_params {
            let given = match self.param_kind(&function, &param) {
                // Which of two dates ("leaving on the 3rd") the user gave is not known.
                Some(kind) if self.params_of(kind).len() > 1 => None,
                Some(kind) => timeline
                    .iter()
                    .find(|m| m.source == Source::User && m.value.kind == kind)
                    .map(|m| m.value.text.clone()),
                None if self.is_place_param(&param) => self.place_said(ctx),
                None => ctx
                    .turns
                    .iter()
                    .find_map(|t| {
                        let c = t.call.as_ref()?;
                        let v = value_text(c.arguments.get(&param)?);
                        let f = fold(&v);
                        let user_said = ctx.user_text().any(|u| {
                            let uw = fold(u);
                            let uw: Vec<&str> = uw.split(' ').collect();
                            find_phrase(&uw, &f).is_some()
                        });
                        (user_said && !f.is_empty() && f != "dontcare").then_some(v)
                    })
                    .or_else(|| named_by_user(ctx, &param)),
            };
            if let Some(v) = given {
                return Some((
                    Fault::UnfoundedValues,
                    format!(
                        "asks for the {} again, which the user gave ({v:?})",
                        identifier_words(&param).join(" ")
                    ),
                ));
            }
        }
        None
    }
}

impl Rubric<'_> {
    /// Whether a parameter names where (a city, a location): by its words or its description,
    /// and it is the schema's only such parameter (of "from" and "to" cities, which one the
    /// user's "in Oakland" gave is not known).
    fn is_place_param(&self, param: &str) -> bool {
        self.place_param
            .get_or_init(|| self.find_place_param())
            .as_deref()
            == Some(param)
    }

    /// The one parameter of the schema that names a place, if there is exactly one.
    fn find_place_param(&self) -> Option<String> {
        let is_place = |f: &crate::tools::Function, p: &str| {
            let description = f
                .parameter(p)
                .and_then(|s| s.get("description"))
                .and_then(|d| d.as_str())
                .unwrap_or_default();
            identifier_words(p)
                .into_iter()
                .chain(words(description))
                .any(|w| PLACE_NOUNS.contains(&w.as_str()))
        };
        let places: BTreeSet<&str> = self
            .tools
            .functions
            .iter()
            .flat_map(|f| f.parameter_names().into_iter().filter(|p| is_place(f, p)))
            .collect();
        match places.into_iter().collect::<Vec<_>>().as_slice() {
            [one] => Some(one.to_string()),
            _ => None,
        }
    }

    /// A place a user turn gave in words: "in Oakland", "in SFO" (a capitalized phrase after
    /// "in", not a month or a weekday).
    fn place_said(&self, ctx: &Context) -> Option<String> {
        static IN_PLACE: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"\b[Ii]n ([A-Z][\w'.&-]*(?: [A-Z][\w'.&-]*)*)").expect("valid pattern")
        });
        let not_calendar = |p: &String| !super::grounding::is_calendar_word(p);
        let said_in = ctx.user_text().find_map(|u| {
            IN_PLACE
                .captures_iter(u)
                .map(|c| c[1].trim_end_matches('.').to_string())
                .find(not_calendar)
        });
        // "Where would you like to eat?" — "Hayward would be nice.": a capitalized word of the
        // answer that the question did not offer.
        let answered = ctx.turns.windows(2).find_map(|w| {
            let (asked, answer) = (&w[0], &w[1]);
            if asked.speaker != Speaker::Assistant || answer.speaker != Speaker::User {
                return None;
            }
            let asks_where = questions_of(&asked.text).iter().any(|q| {
                let qw: Vec<&str> = q.split(' ').collect();
                qw.first() == Some(&"where") || qw.iter().any(|w| PLACE_NOUNS.contains(w))
            });
            if !asks_where {
                return None;
            }
            let offered = words(&asked.text);
            answer
                .text
                .split_whitespace()
                .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
                .filter(|w| w.starts_with(|c: char| c.is_uppercase()))
                .map(String::from)
                .find(|w| {
                    let f = fold(w);
                    !ANSWER_OPENERS.contains(&f.as_str())
                        && !offered.contains(&f)
                        && not_calendar(w)
                })
        });
        said_in.or(answered)
    }
}

/// A name the user gave with the parameter's own noun around it: "the El Rancho restaurant",
/// "the restaurant to be Kobe", "a restaurant called Juerga" for `restaurant_name`.
fn named_by_user(ctx: &Context, param: &str) -> Option<String> {
    const NAME: &str = r"([A-Z][\w'&.-]*(?:\s+[A-Z][\w'&.-]*)*)";
    let nouns: Vec<String> = identifier_words(param)
        .into_iter()
        .filter(|w| w.len() >= 3 && !GENERIC_FIELD_WORDS.contains(&w.as_str()))
        .collect();
    nouns.iter().find_map(|noun| {
        let noun = regex::escape(noun);
        let after = Regex::new(&format!(
            r"(?i:\b{noun}\s+(?:is\s+|called\s+|named\s+|to\s+be\s+)?){NAME}"
        ))
        .ok()?;
        let before = Regex::new(&format!(r"{NAME}\s+(?i:{noun})\b")).ok()?;
        ctx.user_text().find_map(|u| {
            after
                .captures(u)
                .or_else(|| before.captures(u))
                .map(|c| c[1].to_string())
                .filter(|n| !ANSWER_OPENERS.contains(&fold(n).as_str()))
        })
    })
}

/// Capitalized words an answer opens with that name no place ("Yes, …", "I think …").
const ANSWER_OPENERS: &[&str] = &[
    "yes",
    "yeah",
    "yep",
    "no",
    "nope",
    "sure",
    "ok",
    "okay",
    "i",
    "im",
    "id",
    "ill",
    "it",
    "its",
    "that",
    "thats",
    "this",
    "please",
    "thanks",
    "thank",
    "maybe",
    "well",
    "actually",
    "the",
    "in",
    "at",
    "lets",
    "let",
    "somewhere",
    "anywhere",
    "any",
    "how",
    "what",
    "can",
    "could",
    "would",
    "we",
    "my",
    "find",
    "search",
    "look",
    "book",
    "hmm",
    "great",
    "perfect",
    "good",
];

/// Words that make a parameter a place ("city", "location"): how English says where.
const PLACE_NOUNS: &[&str] = &[
    "city",
    "town",
    "location",
    "locality",
    "area",
    "neighborhood",
];

/// The numbers written with digits in `text` ("$1,550" → 1550, "3.7").
fn numbers_in(text: &str) -> Vec<f64> {
    static NUMBER: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\d[\d,]*(?:\.\d+)?").expect("valid pattern"));
    NUMBER
        .find_iter(text)
        .filter_map(|m| m.as_str().replace(',', "").parse::<f64>().ok())
        .collect()
}

/// `message` with the names of result records replaced, so "August 1 Five" or "8 Immortals"
/// states no date or count.
fn mask_names(ctx: &Context, message: &str) -> String {
    let mut names: Vec<String> = ctx
        .records()
        .flat_map(|r| r.iter())
        .filter(|(k, _)| k.to_lowercase().contains("name"))
        .map(|(_, v)| value_text(v))
        .filter(|n| n.len() >= 3)
        .collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = message.to_string();
    for n in names {
        let lower = out.to_lowercase();
        if let Some(i) = lower.find(&n.to_lowercase()) {
            if out.is_char_boundary(i) && out.is_char_boundary(i + n.len()) {
                out.replace_range(i..i + n.len(), "NAME");
            }
        }
    }
    out
}

/// Whether a reply only closes the conversation: a closing phrase, no question, at most a few
/// other words ("Okay, have a good day.").
fn is_closing(text: &str) -> bool {
    let ws = words(text);
    let ws: Vec<&str> = ws.iter().map(String::as_str).collect();
    let closes = CLOSINGS.iter().any(|p| find_phrase(&ws, p).is_some());
    closes && !text.contains('?') && ws.len() <= 8
}

/// Whether a reply asks something, asks to confirm, or closes the conversation: it takes the
/// user's turn up in some way.
fn asks_confirms_or_closes(message: &str) -> bool {
    !questions_of(message).is_empty()
        || is_closing(message)
        || words(message)
            .iter()
            .any(|w| CONFIRMATION_CUES.contains(&w.as_str()))
}

/// What a text reports of a transaction: `Some(false)` failed, `Some(true)` succeeded.
fn reported(text: &str) -> Option<bool> {
    let ws = words(text);
    let ws: Vec<&str> = ws.iter().map(String::as_str).collect();
    let has = |list: &[&str]| list.iter().any(|p| find_phrase(&ws, p).is_some());
    if has(FAILURE_PHRASES) {
        Some(false)
    } else if has(SUCCESS_PHRASES) || has(REPORTED) {
        Some(true)
    } else {
        None
    }
}

/// Runs of capitalized words ("San Jose", "Ariake"), not counting a sentence's first word
/// alone ("Please").
pub(super) fn capitalized_phrases(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    let mut sentence_start = true;
    for raw in text.split_whitespace() {
        let w = raw.trim_matches(|c: char| !c.is_alphanumeric());
        let capital = w.starts_with(|c: char| c.is_uppercase());
        if capital && !(sentence_start && cur.is_empty()) {
            cur.push(w);
        } else if !cur.is_empty() {
            out.push(cur.join(" "));
            cur.clear();
        }
        // A word that ends a clause ends a run: "Ariake, San Jose" are two values.
        if raw.ends_with(|c: char| ",;:.!?".contains(c)) && !cur.is_empty() {
            out.push(cur.join(" "));
            cur.clear();
        }
        sentence_start = raw.ends_with(['.', '!', '?', ':']);
    }
    if !cur.is_empty() {
        out.push(cur.join(" "));
    }
    out
}

/// Whether a date span is a bare "today"/"tonight" said as a pleasantry: no "for"/"on" before
/// it and no "at" after it.
fn is_pleasantry_day(text: &str, r: &std::ops::Range<usize>) -> bool {
    let said = text[r.clone()].to_lowercase();
    if said != "today" && said != "tonight" {
        return false;
    }
    let before = text[..r.start].split_whitespace().next_back().map(fold);
    let after = text[r.end..].split_whitespace().next().map(fold);
    !before.is_some_and(|w| DAY_CUES_BEFORE.contains(&w.as_str())) && after.as_deref() != Some("at")
}

/// The folded sentences of `text` that ask something: ending in "?" or starting with a word
/// that asks.
fn questions_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut sentence = String::new();
    for c in text.chars() {
        sentence.push(c);
        if matches!(c, '?' | '.' | '!' | '\n') {
            push_question(&sentence, &mut out);
            sentence.clear();
        }
    }
    push_question(&sentence, &mut out);
    out
}

fn push_question(sentence: &str, out: &mut Vec<String>) {
    let f = fold(sentence);
    let first = f.split(' ').next().unwrap_or("");
    if !f.is_empty() && (sentence.trim_end().ends_with('?') || ASKING.contains(&first)) {
        out.push(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::ToolCall;
    use crate::judge::normalize::Normalizer;
    use crate::judge::rubric::{Lexicon, Verdict};
    use crate::tools::ToolSet;
    use serde_json::{json, Value};
    use std::collections::BTreeMap;

    #[test]
    fn questions_are_found() {
        let q = questions_of("Great. What is their phone number? Also the address.");
        assert_eq!(q, ["what is their phone number"]);
        assert_eq!(
            questions_of("Tell me the address."),
            ["tell me the address"]
        );
    }

    /// A house-rental schema: two dates, a count of adults, a search and a booking.
    fn houses() -> ToolSet {
        let v = json!([
            {"type": "function", "function": {"name": "SearchHouse", "x-kind": "search",
             "parameters": {"type": "object", "properties": {
                "where_to": {"type": "string"},
                "number_of_adults": {"type": "string", "enum": ["1", "2", "3", "4", "5", "dontcare"]},
                "has_laundry_service": {"type": "string", "enum": ["True", "False", "dontcare"]},
                "rating": {"type": "string"}},
              "required": ["where_to"]}}},
            {"type": "function", "function": {"name": "BookHouse", "x-kind": "transaction",
             "parameters": {"type": "object", "properties": {
                "where_to": {"type": "string"},
                "number_of_adults": {"type": "string", "enum": ["1", "2", "3", "4", "5"]},
                "check_in_date": {"type": "string"}, "check_out_date": {"type": "string"}},
              "required": ["where_to", "number_of_adults", "check_in_date", "check_out_date"]}}}
        ]);
        ToolSet::from_openai(&v, "respond_to_user", &[], "t").unwrap()
    }

    const HOUSE: &str = r#"{"address": "21 Rue Cler", "where_to": "Paris", "rating": "4.6", "phone_number": "+33 1 45 55 21 00", "has_laundry_service": "True", "total_price": "1250", "number_of_adults": "2", "check_in_date": "2019-03-05", "check_out_date": "2019-03-08"}"#;

    fn conversation(tail: Value) -> Context {
        let mut msgs = vec![
            json!({"role": "user", "content": "I need a house in Paris for 2 people, checking in on March 5th and out on the 8th."}),
            json!({"role": "assistant", "tool_calls": [{"function": {"name": "SearchHouse", "arguments": {"where_to": "Paris", "number_of_adults": "2"}}}]}),
            json!({"role": "tool", "content": format!("[{HOUSE}]")}),
            json!({"role": "assistant", "tool_calls": [{"function": {"name": "respond_to_user", "arguments": {"message": "I found a house at 21 Rue Cler with a rating of 4.6."}}}]}),
        ];
        msgs.extend(tail.as_array().cloned().unwrap_or_default());
        Context::from_messages(&Value::Array(msgs), "respond_to_user").unwrap()
    }

    fn judge(ctx: &Context, reference: &str, pred: &str) -> Verdict {
        let tools = houses();
        let norm = Normalizer::new("2019-03-01", &BTreeMap::new()).unwrap();
        let rubric = Rubric::new(&tools, &norm, "respond_to_user", Lexicon::build([ctx]));
        let say = |m: &str| {
            ToolCall::new(
                "respond_to_user",
                json!({ "message": m }).as_object().unwrap().clone(),
            )
        };
        rubric.judge(ctx, &say(reference), &say(pred))
    }

    fn booked(result: &str) -> Context {
        conversation(json!([
            {"role": "user", "content": "Yes, book it."},
            {"role": "assistant", "tool_calls": [{"function": {"name": "BookHouse", "arguments": {"where_to": "Paris", "number_of_adults": "2", "check_in_date": "2019-03-05", "check_out_date": "2019-03-08"}}}]},
            {"role": "tool", "content": result}
        ]))
    }

    #[test]
    fn outcomes_of_a_transaction_must_be_reported_as_they_happened() {
        let ok = booked(&format!("[{HOUSE}]"));
        let failed = booked("[]");
        for (ctx, msg, class) in [
            (&ok, "Your house has been booked!", "good"),
            (&ok, "Done, enjoy your stay.", "good"),
            (
                &ok,
                "Is there anything else I can help you with?",
                "missed_outcome",
            ),
            (&failed, "You're all set!", "false_outcome"),
            (
                &failed,
                "Sorry, the booking failed. Shall I try another house?",
                "good",
            ),
            (&failed, "What else can I do for you?", "missed_outcome"),
        ] {
            // The reference reports the outcome as it happened.
            let reference = if ctx.results.last().is_some_and(|b| b.records.is_empty()) {
                "Sorry, the booking failed."
            } else {
                "Your house is booked."
            };
            let v = judge(ctx, reference, msg);
            assert_eq!(v.class(), class, "{msg:?}: {}", v.reason);
        }
        // Announced before any booking was made.
        let before = conversation(json!([{"role": "user", "content": "Sounds nice."}]));
        let v = judge(&before, "Shall I book it?", "Your house is booked!");
        assert_eq!(v.class(), "false_outcome", "{}", v.reason);
    }

    #[test]
    fn stated_values_must_be_the_users() {
        let ctx = conversation(json!([{"role": "user", "content": "Great, book it."}]));
        let reference =
            "Please confirm: a house in Paris for 2 people from March 5th to March 8th.";
        for (msg, class) in [
            (reference, "good"),
            (
                "Please confirm: a house in Paris for 2 adults from the 5th of March.",
                "good",
            ),
            (
                "Please confirm: a house in Paris for 4 people.",
                "unfounded_values",
            ),
            (
                "Please confirm: a house in Paris from March 12th.",
                "unfounded_values",
            ),
        ] {
            let v = judge(&ctx, reference, msg);
            assert_eq!(v.class(), class, "{msg:?}: {}", v.reason);
        }
        // The user changed the head count: the old one is a contradiction.
        let changed = conversation(json!([
            {"role": "user", "content": "Actually we will be 3 people. Book it."}
        ]));
        let v = judge(
            &changed,
            "Please confirm: 3 people.",
            "Please confirm: a house for 2 people.",
        );
        assert_eq!(v.class(), "contradicts_user", "{}", v.reason);
        let v = judge(
            &changed,
            "Please confirm: 3 people.",
            "Please confirm: a house for 3 people.",
        );
        assert!(v.good, "{}", v.reason);
    }

    #[test]
    fn the_users_question_must_be_answered() {
        let ctx = conversation(json!([
            {"role": "user", "content": "What is their phone number? And how much is it in total?"}
        ]));
        let reference = "Call them at +33 1 45 55 21 00. It costs $1,250.";
        for (msg, class) in [
            (reference, "good"),
            ("The total price is $1,250.", "good"),
            ("Sorry, I don't have that information.", "good"),
            (
                "Is there anything else I can help you with?",
                "ignores_request",
            ),
            ("Would you like to book it?", "ignores_request"),
        ] {
            let v = judge(&ctx, reference, msg);
            assert_eq!(v.class(), class, "{msg:?}: {}", v.reason);
        }
        // The reference does not answer either: no fault of this kind.
        let v = judge(&ctx, "Shall I book it?", "Would you like to book it?");
        assert!(v.good, "{}", v.reason);
    }

    #[test]
    fn asking_again_for_a_given_value() {
        let ctx = conversation(json!([{"role": "user", "content": "Does it have laundry?"}]));
        let v = judge(
            &ctx,
            "Yes, it has laundry.",
            "Yes. Which where to are you going?",
        );
        // "where to" is asked right after "which": the user gave Paris.
        assert_eq!(v.class(), "unfounded_values", "{}", v.reason);
        // Two dates: which one the user gave is not known, so asking is no fault.
        let v = judge(
            &ctx,
            "Yes, it has laundry.",
            "Yes it does. What check in date do you want?",
        );
        assert!(v.good, "{}", v.reason);
    }

    #[test]
    fn swapped_values_contradict_the_user() {
        let ctx = conversation(json!([{"role": "user",
            "content": "Book me the Villa Rosa house in Nice instead."}]));
        let reference = "Please confirm: the Villa Rosa house in Nice, 2 adults.";
        let v = judge(
            &ctx,
            reference,
            "Please confirm: the Nice house in Villa Rosa, 2 adults.",
        );
        assert_eq!(v.class(), "contradicts_user", "{}", v.reason);
        // The same values in another order, or said once each in other places, are no swap.
        for good in [
            "Please confirm: the Villa Rosa house in Nice, 2 adults.",
            "So that is Nice, the Villa Rosa house, for 2 adults?",
            "Please confirm: in Nice, the house Villa Rosa, 2 adults.",
        ] {
            let v = judge(&ctx, reference, good);
            assert!(v.good, "{good}: {}", v.reason);
        }
    }
}
