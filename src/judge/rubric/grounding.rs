//! Reply checks on what a reply is made of rather than what it claims: a reply that says again
//! what an earlier reply said while the user has moved on, a reply that names something (a
//! capitalized word) that nobody in the conversation said, no call or result holds and the
//! schema does not know, and a reply with words no reader can read ("cityderate").
//!
//! They read the conversation, the reference, the tool schema and English: function words,
//! calendar words and `english.txt`, the words SGD's dialogues of at least two services use
//! (`scripts/english_words.py`), never a domain's.

use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::sync::LazyLock;

use super::dialogue::capitalized_phrases;
use super::{find_words, Fault, Rubric};
use crate::judge::context::{Context, Speaker};
use crate::judge::normalize::{fold, parse_number, value_text};
use tracelab_core::dates::{MONTHS, WEEKDAYS};
use tracelab_core::text::{identifier_words, words};

/// English words that carry no content of their own: two replies that share every other word
/// say the same thing.
const FUNCTION_WORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "it", "its", "they", "their",
    "them", "theyre", "this", "that", "there", "these", "those", "i", "im", "you", "youre", "your",
    "we", "our", "my", "me", "of", "in", "on", "at", "for", "to", "with", "and", "or", "but", "so",
    "do", "does", "did", "not", "dont", "doesnt", "have", "has", "had", "also", "as", "by", "from",
    "can", "could", "would", "will", "should", "may", "am", "very", "just", "what", "which",
    "where", "when", "how", "who", "any", "some", "here", "called", "okay", "ok", "sure", "yes",
    "yeah", "well", "then", "if", "about", "like", "want", "please",
];

/// English words: those SGD's dialogues of at least two services use, folded.
static ENGLISH: LazyLock<BTreeSet<&'static str>> =
    LazyLock::new(|| include_str!("../english.txt").lines().collect());

/// Words shorter than this are too short to call unreadable ("ma", "re" may be anything).
const MIN_UNREADABLE_LEN: usize = 4;

/// How much of a reply's content an earlier reply must hold for the reply to repeat it.
const REPEATED_SHARE: f64 = 0.8;

/// Capitalized words that are no value anyone has to have said: the calendar, the clock, "I".
fn is_common_capital(w: &str) -> bool {
    matches!(
        w,
        "i" | "am" | "pm" | "ok" | "okay" | "mr" | "mrs" | "ms" | "dr"
    ) || is_calendar_word(w)
}

/// A month's or a weekday's name, in any case.
pub(super) fn is_calendar_word(w: &str) -> bool {
    MONTHS
        .iter()
        .chain(WEEKDAYS.iter())
        .any(|m| m.eq_ignore_ascii_case(w))
}

/// Whether the words `ws` say a call's or a record's value: one of three letters or more, not a
/// bare boolean.
fn says_value(ws: &[&str], v: &serde_json::Value) -> bool {
    let value = fold(&value_text(v));
    value.len() >= 3
        && !matches!(value.as_str(), "true" | "false")
        && find_words(ws, &value.split(' ').collect::<Vec<_>>()).is_some()
}

/// The folded words of `text` that carry content.
fn content_words(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| !FUNCTION_WORDS.contains(&w.as_str()))
        .collect()
}

impl Rubric<'_> {
    /// A reply that says again what an earlier reply said (the same fact: a result's value or
    /// field, a number), while the user's latest turn asks about none of it, leaves that turn
    /// unanswered: "Burma Love is a nice restaurant" once more after "That would be fine".
    pub(super) fn check_repeats(&self, ctx: &Context, message: &str) -> Option<(Fault, String)> {
        let last_user = ctx.turns.iter().rposition(|t| t.speaker == Speaker::User)?;
        let content = content_words(message);
        if content.len() < 2 || !self.states_a_fact(ctx, message) {
            return None;
        }
        let asked = content_words(&ctx.turns[last_user].text);
        if content.iter().any(|w| asked.contains(w)) {
            return None;
        }
        let earlier = ctx.turns[..last_user]
            .iter()
            .filter(|t| t.speaker == Speaker::Assistant && t.call.is_none())
            .find(|t| {
                let e = content_words(&t.text);
                let shared = content.iter().filter(|w| e.contains(w)).count();
                let numbers_kept = content
                    .iter()
                    .filter(|w| w.chars().any(|c| c.is_ascii_digit()))
                    .all(|w| e.contains(w));
                numbers_kept && shared as f64 >= REPEATED_SHARE * content.len() as f64
            })?;
        Some((
            Fault::IgnoresRequest,
            format!(
                "repeats an earlier reply ({:?}) where the user has moved on",
                earlier.text
            ),
        ))
    }

    /// A user who asks for another option ("Anything else?", "Is there another one?") and gets
    /// a result an earlier reply already presented, with no number it did not give, while the
    /// results hold one not presented yet, is left unanswered. Results are named by their fields
    /// whose name says "name".
    pub(super) fn check_same_again(&self, ctx: &Context, message: &str) -> Option<(Fault, String)> {
        let last_user = ctx.turns.iter().rposition(|t| t.speaker == Speaker::User)?;
        if !asks_for_another(&ctx.turns[last_user].text) {
            return None;
        }
        let block = ctx.results.iter().rev().find(|b| b.turn < last_user)?;
        let names: Vec<String> = block
            .records
            .iter()
            .flat_map(|r| r.iter())
            .filter(|(k, _)| identifier_words(k).iter().any(|w| w == "name"))
            .map(|(_, v)| fold(&value_text(v)))
            .filter(|n| n.len() >= 3)
            .collect();
        let names_in = |text: &str| -> Vec<&String> {
            let ws = words(text);
            let ws: Vec<&str> = ws.iter().map(String::as_str).collect();
            names
                .iter()
                .filter(|n| find_words(&ws, &n.split(' ').collect::<Vec<_>>()).is_some())
                .collect()
        };
        let replies: Vec<&str> = ctx.turns[block.turn..last_user]
            .iter()
            .filter(|t| t.speaker == Speaker::Assistant && t.call.is_none())
            .map(|t| t.text.as_str())
            .collect();
        let presented: BTreeSet<&String> = replies.iter().flat_map(|t| names_in(t)).collect();
        // A number no earlier reply gave is news about it ("another time?": "7:30 pm at
        // Rheem Theatre").
        let said_numbers: BTreeSet<String> = replies.iter().flat_map(|t| words(t)).collect();
        let news = words(message)
            .iter()
            .any(|w| w.chars().any(|c| c.is_ascii_digit()) && !said_numbers.contains(w));
        let again = names_in(message);
        let fresh = names.iter().any(|n| !presented.contains(n));
        match again.as_slice() {
            [one] if presented.contains(one) && fresh && !news => Some((
                Fault::IgnoresRequest,
                format!("presents {one:?} again where the user asked for another"),
            )),
            _ => None,
        }
    }

    /// A reply that asks the user to confirm and states nothing to confirm — no number, time,
    /// date or count, no name, no value of a call or a result ("Please confirm the details: city should
    /// I search for?", "Which restaurants. Does that sound right?") — takes nothing up: a
    /// student's garbled confirmation.
    pub(super) fn check_empty_confirmation(
        &self,
        ctx: &Context,
        message: &str,
    ) -> Option<(Fault, String)> {
        let ws = words(message);
        let ws: Vec<&str> = ws.iter().map(String::as_str).collect();
        // Asking to confirm, not "Do you want to confirm it?" nor "I can confirm that …".
        let cue = [
            &["please", "confirm"][..],
            &["confirm", "the", "details"],
            &["sound", "right"],
            &["sound", "correct"],
            &["that", "right"],
            &["that", "correct"],
        ]
        .iter()
        .any(|p| find_words(&ws, p).is_some());
        if !cue
            || ws.iter().any(|w| w.chars().any(|c| c.is_ascii_digit()))
            || self.states_time_date_or_count(message)
            || capitalized_phrases(message)
                .iter()
                .any(|p| p.split(' ').any(|w| !is_common_capital(&w.to_lowercase())))
        {
            return None;
        }
        let calls = ctx
            .turns
            .iter()
            .filter_map(|t| t.call.as_ref())
            .flat_map(|c| c.arguments.values());
        let records = ctx.records().flat_map(|r| r.values());
        let states_a_value = calls.chain(records).any(|v| says_value(&ws, v));
        (!states_a_value).then(|| {
            (
                Fault::IgnoresRequest,
                "asks to confirm but states nothing to confirm".to_string(),
            )
        })
    }

    /// Whether a reply states something of the results: a record's value, a field's words, or
    /// a number.
    fn states_a_fact(&self, ctx: &Context, message: &str) -> bool {
        let ws = words(message);
        let ws: Vec<&str> = ws.iter().map(String::as_str).collect();
        if ws.iter().any(|w| w.chars().any(|c| c.is_ascii_digit())) {
            return true;
        }
        ctx.records().flat_map(|r| r.iter()).any(|(k, v)| {
            let value_said = says_value(&ws, v);
            let field: Vec<String> = identifier_words(k)
                .into_iter()
                .filter(|w| w.len() >= 3 && !FUNCTION_WORDS.contains(&w.as_str()))
                .collect();
            let field: Vec<&str> = field.iter().map(String::as_str).collect();
            value_said || (!field.is_empty() && find_words(&ws, &field).is_some())
        })
    }

    /// The checks on what a reply names and spells, [`Self::check_unsaid`] and
    /// [`Self::check_unreadable`], with the words of the conversation gathered once, and only
    /// when a word needs them.
    pub(super) fn check_grounding(
        &self,
        ctx: &Context,
        reference: &str,
        message: &str,
    ) -> Vec<(Fault, String)> {
        let said = OnceCell::new();
        let said = || said.get_or_init(|| self.said_words(ctx, reference));
        self.check_unsaid(message, said)
            .into_iter()
            .chain(self.check_unreadable(message, said))
            .collect()
    }

    /// A reply that names something nobody said: a capitalized word (not a sentence's first
    /// word, not the calendar's) that no turn of the conversation, no call, no result, not the
    /// reference and not the schema hold ("I found 1 Hotel Brooklyn" in a conversation about
    /// restaurants in Santa Clara; "in San Francisco" when the user gave no city).
    fn check_unsaid<'s>(
        &self,
        message: &str,
        said: impl Fn() -> &'s BTreeSet<String>,
    ) -> Option<(Fault, String)> {
        let unsaid = |w: &String| {
            let said = said();
            // A name cut short ("Soo Yuan Resta") still names what was said; "St" for a said
            // "Street".
            let cut_short = || w.len() >= 4 && said.iter().any(|s| s.starts_with(w.as_str()));
            let abbreviated = || {
                super::STREET
                    .iter()
                    .any(|(short, long)| short == w && said.contains(*long))
            };
            !said.contains(w) && !cut_short() && !abbreviated()
        };
        super::dialogue::capitalized_phrases(message)
            .into_iter()
            .find(|phrase| {
                words(phrase).iter().any(|w| {
                    w.len() >= 2 && !is_common_capital(w) && parse_number(w).is_none() && unsaid(w)
                })
            })
            .map(|phrase| {
                (
                    Fault::UnfoundedValues,
                    format!(
                        "names {phrase:?}, which nobody in this conversation said and no result \
                         holds"
                    ),
                )
            })
    }

    /// A reply with a lower-case word that is no English word and that neither this
    /// conversation, the reference, the schema nor any conversation of the judged set says
    /// ("Please confirm the details: cityderate, dated."), or with a clock time whose hour is a
    /// word ("a table at Right:00"), cannot be read: a student's garbled output. Capitalized
    /// words are names, for [`Self::check_unsaid`].
    fn check_unreadable<'s>(
        &self,
        message: &str,
        said: impl Fn() -> &'s BTreeSet<String>,
    ) -> Option<(Fault, String)> {
        if let Some(clock) = message.split_whitespace().find(|w| is_worded_clock(w)) {
            return Some((
                Fault::Unreadable,
                format!("has a clock time whose hour is a word ({clock:?})"),
            ));
        }
        let first = message
            .split_whitespace()
            .filter(|w| w.starts_with(|c: char| c.is_lowercase()))
            .flat_map(words)
            .filter(|w| {
                w.chars().count() >= MIN_UNREADABLE_LEN && w.chars().all(char::is_alphabetic)
            })
            .filter(|w| !ENGLISH.contains(w.as_str()) && !self.lexicon.words.contains(w))
            .find(|w| !said().contains(w))?;
        Some((
            Fault::Unreadable,
            format!("has a word nobody can read ({first:?})"),
        ))
    }

    /// Every folded word the conversation, its calls and results, the reference and the tool
    /// schema hold, with the words of the task's synonyms of what was said.
    fn said_words(&self, ctx: &Context, reference: &str) -> BTreeSet<String> {
        let mut texts: Vec<String> = vec![reference.to_string()];
        for t in &ctx.turns {
            texts.push(t.text.clone());
            if let Some(c) = &t.call {
                texts.push(c.name.clone());
                texts.extend(c.arguments.values().map(value_text));
            }
        }
        for r in ctx.records() {
            for (k, v) in r {
                texts.push(identifier_words(k).join(" "));
                texts.push(value_text(v));
            }
        }
        for f in &self.tools.functions {
            texts.push(identifier_words(&f.name).join(" "));
            texts.push(f.description.clone());
            texts.push(f.parameters.to_string());
        }
        let mut said: BTreeSet<String> = texts.iter().flat_map(|t| words(t)).collect();
        let folded: Vec<String> = texts.iter().map(|t| fold(t)).collect();
        let is_said = |phrase: &str| {
            let p: Vec<&str> = phrase.split(' ').collect();
            folded.iter().any(|t| {
                let tw: Vec<&str> = t.split(' ').collect();
                find_words(&tw, &p).is_some()
            })
        };
        for (canonical, alts) in self.norm.synonyms.groups() {
            if std::iter::once(canonical)
                .chain(alts.iter().map(String::as_str))
                .any(is_said)
            {
                said.extend(words(canonical));
                said.extend(alts.iter().flat_map(|a| words(a)));
            }
        }
        said
    }
}

/// Whether a user's turn asks for another option: "else", "another", "other" or "different",
/// and no "nothing", "don't" or "that's all" ("No, nothing else" closes instead).
fn asks_for_another(text: &str) -> bool {
    let ws = words(text);
    let has = |list: &[&str]| ws.iter().any(|w| list.contains(&w.as_str()));
    let all_said = ws.windows(2).any(|p| p[0] == "thats" && p[1] == "all");
    has(&["else", "another", "other", "others", "different"])
        && !has(&["nothing", "dont"])
        && !all_said
}

/// Whether a whitespace-separated token is a clock time with a word for its hour: letters, a
/// colon, two digits ("Right:00", "at:30,").
fn is_worded_clock(token: &str) -> bool {
    let token = token.trim_end_matches(|c: char| c.is_ascii_punctuation());
    token.split_once(':').is_some_and(|(hour, minutes)| {
        !hour.is_empty()
            && hour.chars().all(char::is_alphabetic)
            && minutes.len() == 2
            && minutes.chars().all(|c| c.is_ascii_digit())
    })
}
