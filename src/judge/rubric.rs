//! The offline rubric judge: BENCHMARK.md's rubric as deterministic rules, with a reason for
//! every verdict.
//!
//! 1. The predicted function must be the reference function.
//! 2. Service calls: every reference argument must name the same entity or intent after
//!    normalization ([`Normalizer`]); a missing argument is bad unless the reference value is the
//!    schema default or "don't care"; an argument the reference omits is bad only when its value
//!    is nowhere in the conversation (invented) or the parameter does not exist.
//! 3. Replies: good unless the message contradicts the tool results in the prefix — yes/no facts
//!    (any boolean field of the records: alcohol, live music, …), categorical facts (fields with
//!    an `enum` in the tool schema: price range, …), phone numbers, street addresses, booking
//!    success or failure, "found N"/"found nothing" claims, and names of places that no result
//!    contains.
//!
//! Nothing here knows about restaurants: field names come from the tool results and schemas, and
//! words for facts come from the field names plus the synonym table.

mod dialogue;
mod grounding;

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::conversation::ToolCall;
use crate::judge::context::{Context, Speaker};
use crate::judge::normalize::{fold, parse_bool, parse_number, value_text, Normalizer, ValueKind};
use crate::tools::{Function, FunctionKind, ToolSet};

/// A judgement of one pair: good or bad, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the prediction is acceptable.
    pub good: bool,
    /// Why, in one line.
    pub reason: String,
    /// For a bad verdict, the class of the fault (`None` when the judge did not say, as an LLM
    /// judge's verdict).
    pub fault: Option<Fault>,
}

impl Verdict {
    /// A good verdict.
    pub fn good(reason: impl Into<String>) -> Verdict {
        Verdict {
            good: true,
            reason: reason.into(),
            fault: None,
        }
    }

    /// A bad verdict of class `fault`.
    pub fn bad(fault: Fault, reason: impl Into<String>) -> Verdict {
        Verdict {
            good: false,
            reason: reason.into(),
            fault: Some(fault),
        }
    }

    /// The verdict's class: `good`, or its fault's name (`bad` when the fault is not known).
    pub fn class(&self) -> &'static str {
        match (self.good, self.fault) {
            (true, _) => "good",
            (false, Some(f)) => f.name(),
            (false, None) => "bad",
        }
    }
}

/// Why a prediction is bad: the classes of the labelling guide
/// (`tests/fixtures/judge-labels/GUIDE.md`), in the order a judge checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The output is no readable call.
    Unreadable,
    /// Another function than the reference's.
    WrongFunction,
    /// A service call with an argument naming another entity, invented, or unknown.
    WrongArgument,
    /// A reply stating a fact the tool results contradict.
    ContradictsResults,
    /// A reply announcing an outcome that did not happen.
    FalseOutcome,
    /// A reply right after a transaction that does not report its outcome.
    MissedOutcome,
    /// A reply stating a value other than the one the user gave or changed to.
    ContradictsUser,
    /// A reply that does not answer the user's latest request.
    IgnoresRequest,
    /// A reply acting on values nobody gave, or asking again for a value already given.
    UnfoundedValues,
}

impl Fault {
    /// Every class, in checking order.
    pub const ALL: [Fault; 9] = [
        Fault::Unreadable,
        Fault::WrongFunction,
        Fault::WrongArgument,
        Fault::ContradictsResults,
        Fault::FalseOutcome,
        Fault::MissedOutcome,
        Fault::ContradictsUser,
        Fault::IgnoresRequest,
        Fault::UnfoundedValues,
    ];

    /// The class's name in verdict files and label files.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Unreadable => "unreadable",
            Fault::WrongFunction => "wrong_function",
            Fault::WrongArgument => "wrong_argument",
            Fault::ContradictsResults => "contradicts_results",
            Fault::FalseOutcome => "false_outcome",
            Fault::MissedOutcome => "missed_outcome",
            Fault::ContradictsUser => "contradicts_user",
            Fault::IgnoresRequest => "ignores_request",
            Fault::UnfoundedValues => "unfounded_values",
        }
    }

    /// The class named `name`.
    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// How the arguments of a service call compare with the reference's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArgReport {
    /// Reference arguments the prediction gets right (present and the same entity, or absent
    /// where the reference value is the default).
    pub matched: usize,
    /// Reference arguments in all.
    pub total: usize,
    /// What is wrong, one entry per problem (missing, different, invented, unknown).
    pub problems: Vec<String>,
}

impl ArgReport {
    /// Every reference argument right (extra arguments not considered).
    pub fn all_reference_args_right(&self) -> bool {
        self.matched == self.total
    }
}

/// Names of entities (places, hotels, …) seen in any tool result of the judged set; a reply that
/// names one of them which its own conversation never returned is naming a place as found that
/// no result contains.
#[derive(Debug, Clone, Default)]
pub struct Lexicon {
    names: BTreeSet<String>,
    longest: usize,
    /// Words that at least [`COMMON_NAME_WORD`] distinct names share after their first word
    /// ("restaurant", "grill", "hotel"): they pad names rather than tell them apart.
    common: BTreeSet<String>,
    /// Every folded word of the judged set's turns and results: what its conversations say.
    words: BTreeSet<String>,
}

/// How many distinct names must share a word for it to count as padding.
const COMMON_NAME_WORD: usize = 3;

impl Lexicon {
    /// Collects name-like fields (keys containing `name`) from every record of `contexts`,
    /// leaving out values that are too generic to be evidence: short single words, numbers, and
    /// values that also occur in non-name fields (cities, cuisines).
    pub fn build<'a>(contexts: impl IntoIterator<Item = &'a Context>) -> Lexicon {
        let mut names = BTreeSet::new();
        let mut other = BTreeSet::new();
        let mut said = BTreeSet::new();
        for ctx in contexts {
            for t in &ctx.turns {
                said.extend(tracelab_core::text::words(&t.text));
            }
            for r in ctx.records() {
                for (k, v) in r {
                    let f = fold(&value_text(v));
                    if f.is_empty() {
                        continue;
                    }
                    said.extend(f.split(' ').map(String::from));
                    if k.to_lowercase().contains("name") {
                        names.insert(f);
                    } else {
                        other.insert(f);
                    }
                }
            }
        }
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for n in &names {
            // A name's first word (after "the") tells it apart ("Celia's" of "Celia's Mexican
            // Restaurant", a chain with many names); padding comes after it.
            let ws: Vec<&str> = n.split(' ').filter(|w| !NAME_GLUE.contains(w)).collect();
            for w in ws.iter().skip(1).collect::<BTreeSet<_>>() {
                *counts.entry(w).or_default() += 1;
            }
        }
        let common = counts
            .into_iter()
            .filter(|(w, c)| *c >= COMMON_NAME_WORD && w.len() >= 3 && parse_number(w).is_none())
            .map(|(w, _)| w.to_string())
            .collect();
        names.retain(|n: &String| {
            let words = n.split(' ').count();
            !other.contains(n)
                && parse_number(n).is_none()
                && (words >= 2 || n.chars().count() >= 6)
        });
        let longest = names
            .iter()
            .map(|n| n.split(' ').count())
            .max()
            .unwrap_or(0);
        Lexicon {
            names,
            longest,
            common,
            words: said,
        }
    }

    /// Number of names known.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no names are known.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Known names occurring in folded `words`, in order of appearance, without repeats.
    fn mentions(&self, words: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        for i in 0..words.len() {
            for n in (1..=self.longest.min(words.len() - i)).rev() {
                let cand = words[i..i + n].join(" ");
                if self.names.contains(&cand) && !found.contains(&cand) {
                    found.push(cand);
                    break;
                }
            }
        }
        found
    }
}

/// The rubric judge for one task.
pub struct Rubric<'a> {
    tools: &'a ToolSet,
    norm: &'a Normalizer,
    respond: String,
    lexicon: Lexicon,
    /// Words that only pad a name: words many result names share ("restaurant", "hotel"),
    /// the words of the functions' names, and English articles and conjunctions.
    fillers: BTreeSet<String>,
    /// Patterns of a count parameter's words before a number ("party size 18"), built once.
    count_labels: std::sync::OnceLock<Vec<regex::Regex>>,
    /// The schema's one place parameter ("city"), if it has exactly one, found once.
    place_param: std::sync::OnceLock<Option<String>>,
}

/// Words negating a fact mentioned after them in the same clause.
const NEGATIONS: &[&str] = &[
    "no", "not", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "cant",
    "cannot", "couldnt", "without", "never", "neither", "nor", "none", "lacks", "lack", "non",
    "nope", // "don t" / "can t" where the apostrophe was typed as a space.
    "t",
];

/// Words that start a new clause: a negation before them does not reach past them.
const CLAUSE_BREAKS: &[&str] = &[
    "but", "however", "although", "though", "whereas", "while", "and", "also", "yet",
];

/// Leading verbs of boolean field names (`serves_alcohol` → "alcohol").
const FIELD_VERBS: &[&str] = &[
    "has", "have", "serves", "serve", "is", "are", "offers", "offer", "allows", "allow", "accepts",
    "accept", "includes", "include", "provides", "provide", "can", "does", "with", "supports",
    "support",
];

/// English words that pad a name ("The Bazille", "Bar and Grill").
const NAME_GLUE: &[&str] = &["the", "and", "of", "a", "at", "in"];

/// Words that only pad a name: the lexicon's common name words, the words of the functions'
/// names in singular and plural, and [`NAME_GLUE`].
fn fillers(tools: &ToolSet, lexicon: &Lexicon) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = NAME_GLUE.iter().map(|w| w.to_string()).collect();
    out.extend(lexicon.common.iter().cloned());
    for f in &tools.functions {
        for w in tracelab_core::text::identifier_words(&f.name) {
            let stem = w.trim_end_matches('s').to_string();
            if stem.len() >= 3 {
                out.insert(format!("{stem}s"));
                out.insert(stem);
            }
        }
    }
    out
}

/// Folded words of the conversation's values of other parameters and fields than `param`
/// (the city that "Yayoi Cupertino" ends with).
fn other_values(ctx: &Context, param: &str) -> BTreeSet<String> {
    let calls = ctx
        .turns
        .iter()
        .filter_map(|t| t.call.as_ref())
        .flat_map(|c| c.arguments.iter());
    ctx.records()
        .flat_map(|r| r.iter())
        .chain(calls)
        .filter(|(k, _)| k.as_str() != param)
        .flat_map(|(_, v)| {
            fold(&value_text(v))
                .split(' ')
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|w| w.len() >= 3 && parse_number(w).is_none())
        .collect()
}

impl<'a> Rubric<'a> {
    /// A judge for `tools` (the reply function is `respond`), comparing values with `norm`, and
    /// knowing the entity names in `lexicon`.
    pub fn new(tools: &'a ToolSet, norm: &'a Normalizer, respond: &str, lexicon: Lexicon) -> Self {
        Rubric {
            tools,
            norm,
            respond: respond.to_string(),
            fillers: fillers(tools, &lexicon),
            lexicon,
            count_labels: std::sync::OnceLock::new(),
            place_param: std::sync::OnceLock::new(),
        }
    }

    /// The reply function's name.
    pub fn respond_name(&self) -> &str {
        &self.respond
    }

    /// Judges `pred` against `reference` with the conversation prefix `ctx`.
    pub fn judge(&self, ctx: &Context, reference: &ToolCall, pred: &ToolCall) -> Verdict {
        if pred.name != reference.name {
            return Verdict::bad(
                Fault::WrongFunction,
                format!(
                    "called {}, the reference calls {}",
                    pred.name, reference.name
                ),
            );
        }
        if reference.name == self.respond {
            return self.judge_reply(ctx, reference, pred);
        }
        let report = self.compare_args(ctx, reference, pred);
        if report.problems.is_empty() {
            Verdict::good(format!(
                "{} with every argument the same ({} of {})",
                pred.name, report.matched, report.total
            ))
        } else {
            Verdict::bad(
                Fault::WrongArgument,
                format!("{}: {}", pred.name, report.problems.join("; ")),
            )
        }
    }

    /// Compares the arguments of two calls of the same service function.
    pub fn compare_args(&self, ctx: &Context, reference: &ToolCall, pred: &ToolCall) -> ArgReport {
        let func = self.tools.get(&reference.name);
        let mut rep = ArgReport {
            total: reference.arguments.len(),
            ..ArgReport::default()
        };
        for (k, rv) in &reference.arguments {
            let r = value_text(rv);
            match pred.arguments.get(k) {
                Some(pv) => {
                    let p = value_text(pv);
                    if self.same_entity(ctx, k, &r, &p) {
                        rep.matched += 1;
                    } else {
                        rep.problems
                            .push(format!("{k} is {p:?}, the reference has {r:?}"));
                    }
                }
                None if is_default(func, k, &r) => rep.matched += 1,
                None => rep
                    .problems
                    .push(format!("{k} is missing (the reference has {r:?})")),
            }
        }
        for (k, pv) in &pred.arguments {
            if reference.arguments.contains_key(k) {
                continue;
            }
            let p = value_text(pv);
            if func.is_some_and(|f| f.parameter(k).is_none()) {
                rep.problems
                    .push(format!("{k} is not a parameter of {}", pred.name));
            } else if is_default(func, k, &p) {
                continue;
            } else if !self.grounded(ctx, k, &p) {
                rep.problems.push(format!(
                    "{k} = {p:?} appears nowhere in the conversation (the reference leaves it out)"
                ));
            }
        }
        rep
    }

    /// Same value after normalization, or the same entity under a shorter or longer name
    /// ("Chili's" for "Chili's Grill & Bar"; "Amelie" for "Amelie San Francisco" when only one
    /// result is called that; "Yayoi" for "Yayoi Cupertino" when Cupertino is the city), or the
    /// user's own words for the entity the reference names ("pizza" for Italian, "SFO" for San
    /// Francisco).
    pub fn same_entity(&self, ctx: &Context, param: &str, reference: &str, pred: &str) -> bool {
        if self.norm.same(param, reference, pred) {
            return true;
        }
        if self.norm.kind_of(param, reference) != ValueKind::Text {
            return false;
        }
        self.same_name(ctx, param, reference, pred) || self.users_words(ctx, param, reference, pred)
    }

    /// One name contains the other, and the extra words are fillers (words many names of the
    /// results share, words of the functions' names), other values of the conversation (a
    /// city), or only one result has a name like it.
    fn same_name(&self, ctx: &Context, param: &str, reference: &str, pred: &str) -> bool {
        let (rw, pw) = (fold(reference), fold(pred));
        let (rw, pw): (Vec<&str>, Vec<&str>) = (rw.split(' ').collect(), pw.split(' ').collect());
        let (short, long) = if rw.len() <= pw.len() {
            (&rw, &pw)
        } else {
            (&pw, &rw)
        };
        if short.is_empty() || !short.iter().all(|w| long.contains(w)) {
            return false;
        }
        let context_words = other_values(ctx, param);
        if long
            .iter()
            .all(|w| short.contains(w) || self.fillers.contains(*w) || context_words.contains(*w))
        {
            return true;
        }
        // Only the results can tell whether the shorter name is unambiguous.
        let long_f = long.join(" ");
        let mut candidates: BTreeSet<String> = BTreeSet::new();
        for r in ctx.records() {
            if let Some(v) = r.get(param) {
                let f = fold(&value_text(v));
                let fw: Vec<&str> = f.split(' ').collect();
                if short.iter().all(|w| fw.contains(w)) {
                    candidates.insert(f);
                }
            }
        }
        candidates.len() == 1 && candidates.contains(&long_f)
    }

    /// The prediction is what the user said where the reference has a value the user never
    /// said (the reference translated the user's words): "pizza" for `Italian`. Not when the
    /// prediction is another value this argument has had, or another allowed value.
    fn users_words(&self, ctx: &Context, param: &str, reference: &str, pred: &str) -> bool {
        let said = |v: &str| {
            let f = fold(v);
            !f.is_empty()
                && ctx.user_text().any(|t| {
                    let tf = fold(t);
                    let tw: Vec<&str> = tf.split(' ').collect();
                    find_phrase(&tw, &f).is_some()
                })
        };
        if !said(pred) || said(reference) {
            return false;
        }
        let pf = fold(pred);
        let allowed = self
            .tools
            .functions
            .iter()
            .filter_map(|f| f.enum_values(param))
            .flatten()
            .map(fold);
        let earlier = ctx
            .turns
            .iter()
            .filter_map(|t| t.call.as_ref()?.arguments.get(param))
            .chain(ctx.records().filter_map(|r| r.get(param)))
            .map(|v| fold(&value_text(v)));
        !allowed.chain(earlier).any(|v| v == pf)
    }

    /// Whether the conversation supports `value` for argument `param`: some phrase of the
    /// user's or assistant's turns or some result value means the same; for yes/no values, the
    /// user mentioned the topic.
    fn grounded(&self, ctx: &Context, param: &str, value: &str) -> bool {
        if parse_bool(value).is_some() {
            let phrases = self.topic_phrases(param);
            return ctx.user_text().any(|t| {
                let f = fold(t);
                let ws: Vec<&str> = f.split(' ').collect();
                phrases.iter().any(|p| find_phrase(&ws, p).is_some())
            });
        }
        for r in ctx.records() {
            if r.values()
                .any(|v| self.norm.same(param, &value_text(v), value))
            {
                return true;
            }
        }
        for t in &ctx.turns {
            if !matches!(t.speaker, Speaker::User | Speaker::Assistant) {
                continue;
            }
            let ws: Vec<String> = t
                .text
                .split_whitespace()
                .map(|w| {
                    w.trim_matches(|c: char| ",.!?;\"()".contains(c))
                        .to_string()
                })
                .collect();
            for i in 0..ws.len() {
                for n in 1..=6.min(ws.len() - i) {
                    if self.norm.same(param, &ws[i..i + n].join(" "), value) {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Words that mention a boolean field's fact: the field name without its leading verb
    /// (`has_live_music` → "live music") and that phrase's synonyms.
    fn topic_phrases(&self, field: &str) -> Vec<String> {
        let words: Vec<String> = field
            .split(['_', '-', ' '])
            .map(str::to_lowercase)
            .collect();
        let start = words
            .iter()
            .position(|w| !FIELD_VERBS.contains(&w.as_str()))
            .unwrap_or(0);
        let topic = fold(&words[start..].join(" "));
        self.norm.synonyms.phrases_for(&topic)
    }

    // ---- Replies -------------------------------------------------------------------------------

    fn judge_reply(&self, ctx: &Context, reference: &ToolCall, pred: &ToolCall) -> Verdict {
        let message = reply_text(pred);
        if message.trim().is_empty() {
            return Verdict::bad(Fault::Unreadable, "the reply has no message");
        }
        // Names are masked before a reply is read for facts, so "Wine" in "Baan Thai House &
        // Wine Bar" is no claim about alcohol and "8" in "8 Immortals" no count.
        let mut names: Vec<String> = ctx
            .records()
            .flat_map(|r| r.iter())
            .filter(|(k, _)| k.to_lowercase().contains("name"))
            .map(|(_, v)| fold(&value_text(v)))
            .filter(|n| !n.is_empty())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let folded = fold(&message);
        let ws: Vec<&str> = folded.split(' ').collect();
        names.extend(self.lexicon.mentions(&ws));
        names.sort_by_key(|n| std::cmp::Reverse(n.split(' ').count()));
        let clauses = claims(&message, &names);
        let against_results = [
            self.check_booleans(ctx, &message, &clauses),
            self.check_categories(ctx, &message, &clauses),
            self.check_phones(ctx, &message),
            self.check_addresses(ctx, &message),
            self.check_search_outcome(ctx, &clauses),
            self.check_names(ctx, &message),
        ]
        .into_iter()
        .flatten()
        .map(|p| (Fault::ContradictsResults, p));
        let outcome = self
            .check_booking(ctx, &message, &clauses)
            .map(|p| (Fault::FalseOutcome, p));
        let mut problems: Vec<(Fault, String)> = against_results.chain(outcome).collect();
        let r = reply_text(reference);
        let mut dialogue = self.check_dialogue(ctx, &message, &clauses, &r);
        if !dialogue.is_empty() {
            // The reference shows what was right at this point: a reply is not faulted for
            // what the reference does too (SGD's own replies sometimes answer a question
            // instead of reporting a booking).
            let rc = claims(&r, &names);
            // The same check on the same kind of value or field (the reason without its quoted
            // values): a reference that states a default count exempts no re-asked city.
            let same: Vec<(Fault, String)> = self
                .check_dialogue(ctx, &r, &rc, &r)
                .into_iter()
                .map(|(f, why)| (f, unquoted(&why)))
                .collect();
            dialogue.retain(|(f, why)| !same.contains(&(*f, unquoted(why))));
        }
        problems.extend(dialogue);
        problems.extend(self.check_swapped(ctx, &r, &message));
        problems.extend(self.check_grounding(ctx, &r, &message));
        problems.extend(self.check_closing(ctx, &r, &message));
        problems.extend(self.check_presents_results(ctx, &r, &message));
        problems.extend(self.check_same_again(ctx, &message));
        problems.extend(self.check_empty_confirmation(ctx, &message));
        problems.extend(self.check_outcome_as_referenced(ctx, &r, &message));
        problems.sort_by_key(|(f, _)| *f);
        match problems.first() {
            None => {
                let n: usize = ctx.results.iter().map(|b| b.records.len()).sum();
                Verdict::good(format!(
                    "reply fits the conversation and the tool results ({} result blocks, {n} records)",
                    ctx.results.len()
                ))
            }
            Some((fault, _)) => {
                let said: Vec<&str> = problems.iter().map(|(_, p)| p.as_str()).collect();
                Verdict::bad(*fault, format!("reply {}", said.join("; ")))
            }
        }
    }

    /// Yes/no facts: any field whose values are `True`/`False`.
    fn check_booleans(&self, ctx: &Context, message: &str, clauses: &[Clause]) -> Option<String> {
        let fields = fields_where(ctx, |v| {
            matches!(fold(&value_text(v)).as_str(), "true" | "false")
        });
        for field in fields {
            let phrases = self.topic_phrases(&field);
            for clause in clauses {
                let ws: Vec<&str> = clause.words.iter().map(String::as_str).collect();
                if !phrases.iter().any(|p| find_phrase(&ws, p).is_some()) {
                    continue;
                }
                // "They don't serve alcohol" and "alcohol isn't served" both deny it.
                let said = !ws.iter().any(|w| NEGATIONS.contains(w));
                let Some((who, value)) = self.fact(ctx, message, clause, &field) else {
                    continue;
                };
                if let Some(actual) = parse_bool(&value) {
                    if actual != said {
                        return Some(format!(
                            "says {who} {} {}, but the result has {field} = {value}",
                            if said { "has" } else { "does not have" },
                            phrases[0]
                        ));
                    }
                }
            }
        }
        None
    }

    /// Categorical facts: fields with a non-numeric, non-boolean `enum` in the tool schema.
    fn check_categories(&self, ctx: &Context, message: &str, clauses: &[Clause]) -> Option<String> {
        // "Please confirm: 2 regular tickets" states what the user asked for, not a fact.
        if words_of(message)
            .iter()
            .any(|w| CONFIRMATION_CUES.contains(&w.as_str()))
        {
            return None;
        }
        let present = fields_where(ctx, |_| true);
        for field in present {
            let Some(values) = self.enum_of(&field) else {
                continue;
            };
            // Phrase → enum value, longest phrase first so "very expensive" wins over "expensive".
            let mut phrases: Vec<(String, String)> = Vec::new();
            for v in &values {
                for p in self.norm.synonyms.phrases_for(v) {
                    phrases.push((p, v.clone()));
                }
            }
            phrases.sort_by_key(|(p, _)| std::cmp::Reverse(p.split(' ').count()));
            for clause in clauses {
                let ws: Vec<&str> = clause.words.iter().map(String::as_str).collect();
                // "neither pricey nor cheap" asserts neither category; "not expensive" denies
                // one, which is checked below.
                let negated = ws.iter().any(|w| NEGATIONS.contains(w));
                let mut said: Vec<&str> = Vec::new();
                let mut taken = vec![false; ws.len()];
                for (p, v) in &phrases {
                    let pw: Vec<&str> = p.split(' ').collect();
                    for i in 0..ws.len().saturating_sub(pw.len() - 1) {
                        if ws[i..i + pw.len()] == pw[..]
                            && !taken[i..i + pw.len()].iter().any(|t| *t)
                        {
                            taken[i..i + pw.len()].iter_mut().for_each(|t| *t = true);
                            said.push(v);
                        }
                    }
                }
                if said.is_empty() {
                    continue;
                }
                let Some((who, value)) = self.fact(ctx, message, clause, &field) else {
                    continue;
                };
                let actual = fold(&value);
                if negated {
                    if let [one] = said.as_slice() {
                        if *one == actual {
                            return Some(format!(
                                "says {who} is not {one}, but the result has {field} = {value}"
                            ));
                        }
                    }
                    continue;
                }
                let compatible = |s: &str| {
                    s == actual
                        || actual.split(' ').any(|w| w == s)
                        || s.split(' ').any(|w| w == actual)
                };
                if !said.iter().any(|s| compatible(s)) {
                    return Some(format!(
                        "says {who} is {}, but the result has {field} = {value}",
                        said[0]
                    ));
                }
            }
        }
        None
    }

    fn enum_of(&self, field: &str) -> Option<Vec<String>> {
        let values: Vec<String> = self
            .tools
            .functions
            .iter()
            .find_map(|f| f.enum_values(field))?
            .into_iter()
            .map(fold)
            .filter(|v| !matches!(v.as_str(), "dontcare" | "dont care" | "any"))
            .collect();
        let categorical = values
            .iter()
            .all(|v| parse_number(v).is_none() && parse_bool(v).is_none());
        (categorical && !values.is_empty()).then_some(values)
    }

    /// The value of `field` the clause is about: the record the clause names, else the record
    /// the message names, else the record the conversation last talked about, else the latest
    /// result when it has one record or all its records agree. Returns (who, value).
    fn fact(
        &self,
        ctx: &Context,
        message: &str,
        clause: &Clause,
        field: &str,
    ) -> Option<(String, String)> {
        let named = clause
            .names
            .iter()
            .find_map(|n| self.named_record(ctx, n))
            .or_else(|| self.named_record(ctx, &fold(message)))
            .or_else(|| {
                ctx.turns
                    .iter()
                    .rev()
                    .filter(|t| matches!(t.speaker, Speaker::Assistant | Speaker::User))
                    .find_map(|t| self.named_record(ctx, &fold(&t.text)))
            });
        if let Some((name, r)) = named {
            return r.get(field).map(|v| (name, value_text(v)));
        }
        let block = ctx.results.iter().rev().find(|b| !b.records.is_empty())?;
        let values: BTreeSet<String> = block
            .records
            .iter()
            .filter_map(|r| r.get(field))
            .map(value_text)
            .collect();
        match (values.len(), values.into_iter().next()) {
            (1, Some(v)) => Some(("the result".to_string(), v)),
            _ => None,
        }
    }

    /// The first record (latest results first) whose name occurs in the folded `text`.
    fn named_record<'c>(
        &self,
        ctx: &'c Context,
        text: &str,
    ) -> Option<(String, &'c Map<String, Value>)> {
        let ws: Vec<&str> = text.split(' ').collect();
        for r in ctx.records() {
            for (k, v) in r {
                if !k.to_lowercase().contains("name") {
                    continue;
                }
                let name = fold(&value_text(v));
                if name.is_empty() {
                    continue;
                }
                let nw: Vec<&str> = name.split(' ').collect();
                let short: Vec<&str> = if nw.len() >= 3 {
                    nw[..2].to_vec()
                } else {
                    nw.clone()
                };
                if find_words(&ws, &nw).is_some() || find_words(&ws, &short).is_some() {
                    return Some((value_text(v), r));
                }
            }
        }
        None
    }

    /// Phone numbers in the reply must be ones a result (or the user) gave.
    fn check_phones(&self, ctx: &Context, message: &str) -> Option<String> {
        let known: BTreeSet<String> = ctx
            .records()
            .flat_map(|r| r.values().map(value_text))
            .chain(ctx.user_text().map(String::from))
            .flat_map(|t| phone_numbers(&t))
            .collect();
        phone_numbers(message)
            .into_iter()
            .find(|p| !known.contains(p))
            .map(|p| format!("gives phone number {p}, which no result contains"))
    }

    /// Street addresses in the reply must be ones a result (or the user) gave.
    fn check_addresses(&self, ctx: &Context, message: &str) -> Option<String> {
        let known: Vec<Vec<String>> = ctx
            .records()
            .flat_map(|r| r.values().map(value_text))
            .chain(ctx.user_text().map(String::from))
            .map(|t| expand_address(&fold(&t)))
            .collect();
        for addr in addresses(message) {
            let aw = expand_address(&addr.join(" "));
            let aw: Vec<&str> = aw.iter().map(String::as_str).collect();
            let found = known.iter().any(|k| {
                let kw: Vec<&str> = k.iter().map(String::as_str).collect();
                find_words(&kw, &aw).is_some()
            });
            if !found {
                return Some(format!(
                    "gives the address {:?}, which no result contains",
                    addr.join(" ")
                ));
            }
        }
        None
    }

    /// Booking success or failure must match the latest transaction's result: no record means
    /// it failed, a record agreeing with every argument means it succeeded (anything else is
    /// left undecided, as SGD sometimes books a nearby time).
    fn check_booking(&self, ctx: &Context, message: &str, clauses: &[Clause]) -> Option<String> {
        // Without a transaction function there is nothing a booking claim could be checked on.
        self.tools.of_kind(FunctionKind::Transaction).next()?;
        let latest = ctx.results.iter().rev().find(|b| {
            b.call
                .as_ref()
                .is_some_and(|c| self.is_transaction(&c.name))
        });
        let txn_words = self.transaction_words();
        let direct = latest.is_some_and(|b| b.turn + 1 == ctx.turns.len());
        // "Please confirm: table booked at 6 pm for 2" states what is about to be booked.
        let asks_to_confirm = words_of(message)
            .iter()
            .any(|w| CONFIRMATION_CUES.contains(&w.as_str()));
        let (mut success, mut failure) = (false, false);
        for clause in clauses {
            let ws: Vec<&str> = clause.words.iter().map(String::as_str).collect();
            let about_booking = direct || ws.iter().any(|w| txn_words.contains(*w));
            if !about_booking {
                continue;
            }
            let failed = FAILURE_PHRASES
                .iter()
                .any(|p| find_phrase(&ws, p).is_some());
            let claims_success = SUCCESS_PHRASES
                .iter()
                .any(|p| find_phrase(&ws, p).is_some());
            // "made without errors" is no denial.
            let negated = ws.iter().any(|w| NEGATIONS.contains(w) && *w != "without");
            let tentative = ws.iter().any(|w| TENTATIVE.contains(w));
            if failed || (claims_success && negated) {
                failure = true;
            } else if claims_success && !tentative && !asks_to_confirm {
                success = true;
            }
        }
        match latest {
            None if success => Some(
                "says a booking was made, but no booking call returned in the conversation".into(),
            ),
            None => None,
            Some(b) => {
                let call = b.call.as_ref()?;
                let outcome = self.transaction_outcome(b);
                match outcome {
                    Some(false) if success && !failure => Some(format!(
                        "says the booking succeeded, but {} returned no record",
                        call.name
                    )),
                    Some(true) if failure && !success => Some(format!(
                        "says the booking failed, but {} returned a matching record",
                        call.name
                    )),
                    _ => None,
                }
            }
        }
    }

    /// When the reply reports on a search that just returned: "nothing found" needs an empty
    /// result, and an empty result cannot be reported as found. "Found N" needs N records of
    /// the latest search at any later turn too ("I found 1 restaurant" after 5 came back).
    fn check_search_outcome(&self, ctx: &Context, clauses: &[Clause]) -> Option<String> {
        let just_returned = ctx.ends_with_result();
        let block = ctx.results.last()?;
        let kind = block
            .call
            .as_ref()
            .and_then(|c| self.tools.get(&c.name))
            .map(|f| f.kind);
        if kind == Some(FunctionKind::Transaction) {
            return None;
        }
        let n = block.records.len();
        let mut counted = false;
        for clause in clauses {
            let ws: Vec<&str> = clause.words.iter().map(String::as_str).collect();
            let more = ws
                .iter()
                .any(|w| matches!(*w, "other" | "another" | "more" | "else" | "others"));
            let nothing = NOTHING_PHRASES
                .iter()
                .any(|p| find_phrase(&ws, p).is_some());
            if nothing && !more && n > 0 && just_returned {
                return Some(format!(
                    "says nothing was found, but the search returned {n} results"
                ));
            }
            // Only the first count reports the search ("there are 10 options … there are 4
            // bedrooms" counts bedrooms second).
            // Later on, "there are 4 more" counts what is left, not what was found.
            if let Some(claimed) = count_claim(&ws).filter(|_| !counted && (just_returned || !more))
            {
                counted = true;
                match claimed {
                    Count::Several if n <= 1 && just_returned => {
                        return Some(format!(
                            "says it found several, but the search returned {n} results"
                        ));
                    }
                    Count::Exactly(c) if c != n => {
                        return Some(format!(
                            "says it found {c}, but the search returned {n} results"
                        ));
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// Names from the judged set's results that this conversation never saw.
    fn check_names(&self, ctx: &Context, message: &str) -> Option<String> {
        let f = fold(message);
        let ws: Vec<&str> = f.split(' ').collect();
        let mentions = self.lexicon.mentions(&ws);
        if mentions.is_empty() {
            return None;
        }
        let seen: Vec<String> = ctx
            .records()
            .flat_map(|r| r.values().map(|v| fold(&value_text(v))))
            .chain(ctx.turns.iter().map(|t| fold(&t.text)))
            .collect();
        let user: BTreeSet<String> = ctx.user_text().flat_map(words_of).collect();
        mentions
            .into_iter()
            .find(|m| {
                let mw: Vec<&str> = m.split(' ').collect();
                let in_results = seen.iter().any(|s| {
                    let sw: Vec<&str> = s.split(' ').collect();
                    find_words(&sw, &mw).is_some()
                });
                // A place the user named by a short form ("Katsu" for "Katsu Los Gatos") is
                // the user's, not invented.
                let distinct: Vec<&&str> =
                    mw.iter().filter(|w| !self.fillers.contains(**w)).collect();
                let user_named = match distinct.as_slice() {
                    [first, ..] if first.len() >= 3 => user.contains(**first),
                    [a, b, ..] => user.contains(**a) && user.contains(**b),
                    _ => false,
                };
                !in_results && !user_named
            })
            .map(|m| format!("names {m:?}, which no result in this conversation contains"))
    }
}

/// A reason without its quoted values: which check, on which kind of value.
fn unquoted(reason: &str) -> String {
    reason.split('"').step_by(2).collect::<Vec<_>>().join("")
}

/// The message of a reply call (its `message` argument, else its first string argument).
fn reply_text(call: &ToolCall) -> String {
    call.arguments
        .get("message")
        .or_else(|| call.arguments.values().find(|v| v.is_string()))
        .map(value_text)
        .unwrap_or_default()
}

/// Stands in for a masked name (never a folded word, which has no punctuation).
const NAME_MASK: &str = "<name>";

/// Phrases that claim a booking went through (unless negated). Future or tentative wording
/// ("the reservation will be set", "confirming your booking") is no claim.
const SUCCESS_PHRASES: &[&str] = &[
    "successful",
    "successfully",
    "confirmed",
    "booked",
    "reserved",
    "succeeded",
    "all set",
    "been made",
    "is made",
    "was made",
    "went through",
    "ive made",
    "i have made",
    "i made",
];

/// Words of a reply that asks the user to confirm details rather than reporting a result.
const CONFIRMATION_CUES: &[&str] = &[
    "confirm",
    "confirmation",
    "verify",
    "correct",
    "review",
    "accurate",
];
/// Words that make a clause about a booking tentative ("will be booked", "being reserved").
const TENTATIVE: &[&str] = &[
    "will", "being", "would", "shall", "going", "should", "can", "could",
];
/// Phrases that claim a booking failed.
const FAILURE_PHRASES: &[&str] = &[
    "failed",
    "fail",
    "unsuccessful",
    "unable",
    "couldnt",
    "could not",
    "cannot",
    "cant",
    "not able",
    "unavailable",
    "not available",
    "fully booked",
    "no availability",
    "didnt go through",
    "did not go through",
];
/// Phrases that claim a search found nothing.
const NOTHING_PHRASES: &[&str] = &[
    "couldnt find",
    "could not find",
    "didnt find",
    "did not find",
    "cant find",
    "cannot find",
    "unable to find",
    "no results",
    "no matches",
    "there are no",
    "there arent any",
    "found nothing",
    "no restaurants",
    "nothing",
];

/// Whether a value is the parameter's schema default or a "don't care".
fn is_default(func: Option<&Function>, param: &str, value: &str) -> bool {
    let f = fold(value);
    if matches!(f.as_str(), "dontcare" | "dont care" | "any" | "") {
        return true;
    }
    func.and_then(|f| f.parameter(param))
        .and_then(|s| s.get("default"))
        .is_some_and(|d| fold(&value_text(d)) == f)
}

/// Field names present in the context's records whose every value satisfies `pred`, sorted.
fn fields_where(ctx: &Context, pred: impl Fn(&Value) -> bool) -> Vec<String> {
    let mut all: BTreeSet<String> = BTreeSet::new();
    let mut bad: BTreeSet<String> = BTreeSet::new();
    for r in ctx.records() {
        for (k, v) in r {
            all.insert(k.clone());
            if !pred(v) {
                bad.insert(k.clone());
            }
        }
    }
    all.difference(&bad).cloned().collect()
}

/// One clause of a reply that states something (questions are not claims).
struct Clause {
    /// Folded words, each known name replaced by [`NAME_MASK`].
    words: Vec<String>,
    /// The names the clause mentions (folded), in order.
    names: Vec<String>,
}

/// The reply split into sentences, questions dropped, and each sentence into clauses at commas
/// and contrast words, so a negation only reaches the facts of its own clause.
fn claims(message: &str, names: &[String]) -> Vec<Clause> {
    let mut out = Vec::new();
    let mut sentence = String::new();
    let chars: Vec<char> = message.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let end = match c {
            '!' | '?' | ';' | '\n' => true,
            '.' => chars.get(i + 1).is_none_or(|n| n.is_whitespace()),
            _ => false,
        };
        if end {
            if c != '?' {
                push_clauses(&sentence, names, &mut out);
            }
            sentence.clear();
        } else {
            sentence.push(c);
        }
    }
    push_clauses(&sentence, names, &mut out);
    out
}

/// `names` must be folded and sorted longest first.
fn push_clauses(sentence: &str, names: &[String], out: &mut Vec<Clause>) {
    let lower = fold(sentence);
    if lower.starts_with("if ") || lower.starts_with("would you") || lower.starts_with("do you") {
        return;
    }
    for part in clause_parts(sentence) {
        // Mask names first, so "and" inside "Chili's Grill & Bar" does not split a clause.
        let mut ws: Vec<String> = words_of(part);
        let mut found: Vec<Option<String>> = vec![None; ws.len()];
        for name in names {
            let nw: Vec<&str> = name.split(' ').collect();
            let mut i = 0;
            while i + nw.len() <= ws.len() {
                if ws[i..i + nw.len()].iter().zip(&nw).all(|(a, b)| a == b) {
                    ws.splice(i..i + nw.len(), [NAME_MASK.to_string()]);
                    found.splice(i..i + nw.len(), [Some(name.clone())]);
                }
                i += 1;
            }
        }
        let mut clause = Clause {
            words: Vec::new(),
            names: Vec::new(),
        };
        for (w, name) in ws.into_iter().zip(found) {
            if CLAUSE_BREAKS.contains(&w.as_str()) && !clause.words.is_empty() {
                out.push(std::mem::replace(
                    &mut clause,
                    Clause {
                        words: Vec::new(),
                        names: Vec::new(),
                    },
                ));
            } else {
                clause.words.push(w);
                clause.names.extend(name);
            }
        }
        if !clause.words.is_empty() {
            out.push(clause);
        }
    }
}

/// A sentence's parts between commas, parentheses and colons, but not the colon of a time
/// ("an 13:15 reservation" is one part).
fn clause_parts(sentence: &str) -> Vec<&str> {
    let bytes = sentence.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, c) in sentence.char_indices() {
        let in_time = c == ':'
            && i > 0
            && bytes[i - 1].is_ascii_digit()
            && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        if matches!(c, ',' | ':' | '(' | ')') && !in_time {
            parts.push(&sentence[start..i]);
            start = i + 1;
        }
    }
    parts.push(&sentence[start..]);
    parts
}

fn words_of(s: &str) -> Vec<String> {
    let f = fold(s);
    f.split(' ')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Position of a folded phrase in folded words.
fn find_phrase(words: &[&str], phrase: &str) -> Option<usize> {
    let pw: Vec<&str> = phrase.split(' ').collect();
    find_words(words, &pw)
}

fn find_words(words: &[&str], pat: &[&str]) -> Option<usize> {
    if pat.is_empty() || pat.len() > words.len() {
        return None;
    }
    (0..=words.len() - pat.len()).find(|&i| words[i..i + pat.len()] == *pat)
}

/// How many results a reply says were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    Exactly(usize),
    /// "a few", "several": more than one, said without a number.
    Several,
}

/// "found 5 restaurants", "there are 10 options", "located 9 hotels": the count, when at least 2
/// and followed by a plural noun (a lone "one" usually means "one of them"). "I have three
/// suggestions" is an offer of some results, not a count of all, so "have" does not count.
fn count_claim(ws: &[&str]) -> Option<Count> {
    for i in 0..ws.len() {
        let counting = match ws[i] {
            "found" | "located" | "returned" | "got" | "discovered" => true,
            "are" => i > 0 && ws[i - 1] == "there",
            _ => false,
        };
        if !counting {
            continue;
        }
        let mut j = i + 1;
        if ws.get(j).is_some_and(|w| matches!(*w, "about" | "around")) {
            return None; // an estimate is not a claim
        }
        if ws.get(j).is_some_and(|w| *w == "only") {
            j += 1;
        }
        // "I found a few options", "several": more than one, said without a number.
        if ws
            .get(j)
            .is_some_and(|w| matches!(*w, "several" | "multiple" | "many"))
            || ws.get(j..j + 2) == Some(&["a", "few"][..])
        {
            return Some(Count::Several);
        }
        let Some(n) = ws.get(j).and_then(|w| parse_number(w)) else {
            continue;
        };
        let noun = ws.get(j + 1).or_else(|| ws.get(j + 2));
        if n >= 2.0 && n.fract() == 0.0 && noun.is_some_and(|w| w.ends_with('s')) {
            return Some(Count::Exactly(n as usize));
        }
        // "I found 1 restaurant" (or a garbled "1 restaurants"): a digit 1 is a count ("found
        // one you may like" is not).
        if ws[j] == "1" && noun.is_some() {
            return Some(Count::Exactly(1));
        }
    }
    None
}

/// Clock times (`19:00`, `7:30 pm`) and ISO dates or months (`2019-03-01`, `2019-03`): digit runs
/// that are not phone numbers even when they stand next to each other ("at 11:00 2019-03-01"
/// must not read as the number 0020190301).
static DATE_OR_TIME: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"(?i)\b\d{1,2}:\d{2}(\s?[ap]\.?m\.?)?|\b(19|20)\d{2}-\d{1,2}(-\d{1,2})?\b")
        .expect("valid pattern")
});

/// Phone numbers (7–15 digits with separators) in `text`, as digit strings; dates and clock times
/// excluded.
fn phone_numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let text = DATE_OR_TIME.replace_all(text, ";");
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() || (chars[i] == '(' || chars[i] == '+') {
            let start = i;
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_digit() || " -().+".contains(chars[j])) {
                j += 1;
            }
            let span: String = chars[start..j].iter().collect();
            let span = span.trim_end_matches(|c: char| !c.is_ascii_digit());
            let digits: String = span.chars().filter(char::is_ascii_digit).collect();
            let iso_date = span.len() == 10
                && span.chars().enumerate().all(|(k, c)| {
                    if k == 4 || k == 7 {
                        c == '-'
                    } else {
                        c.is_ascii_digit()
                    }
                });
            if (7..=15).contains(&digits.len())
                && !iso_date
                && span.contains(['-', '(', ')', '.', ' ', '+'])
                || digits.len() == 10 && !iso_date
            {
                out.push(digits);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Street suffixes and their long forms.
const STREET: &[(&str, &str)] = &[
    ("street", "street"),
    ("st", "street"),
    ("avenue", "avenue"),
    ("ave", "avenue"),
    ("road", "road"),
    ("rd", "road"),
    ("boulevard", "boulevard"),
    ("blvd", "boulevard"),
    ("drive", "drive"),
    ("dr", "drive"),
    ("way", "way"),
    ("lane", "lane"),
    ("ln", "lane"),
    ("place", "place"),
    ("pl", "place"),
    ("court", "court"),
    ("ct", "court"),
    ("parkway", "parkway"),
    ("pkwy", "parkway"),
    ("highway", "highway"),
    ("hwy", "highway"),
    ("square", "square"),
    ("plaza", "plaza"),
    ("terrace", "terrace"),
    ("circle", "circle"),
    ("alley", "alley"),
];

fn expand_address(folded: &str) -> Vec<String> {
    folded
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let long = STREET.iter().find(|(s, _)| *s == w).map(|(_, l)| *l);
            let dir = match w {
                "n" => Some("north"),
                "s" => Some("south"),
                "e" => Some("east"),
                "w" => Some("west"),
                _ => None,
            };
            long.or(dir).unwrap_or(w).to_string()
        })
        .collect()
}

/// Street addresses in `text`: a house number, up to four capitalized words, a capitalized
/// street suffix ("71 North San Pedro Street", "605 Post St"). Returned as folded words.
fn addresses(text: &str) -> Vec<Vec<String>> {
    let raw: Vec<String> = text
        .replace(['\'', '’'], "")
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    let mut out = Vec::new();
    let is_number = |w: &str| {
        w.chars().next().is_some_and(|c| c.is_ascii_digit())
            && w.chars().filter(|c| c.is_ascii_digit()).count() >= 1
            && w.len() <= 6
    };
    let capital = |w: &str| {
        w.chars()
            .next()
            .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit())
    };
    let mut i = 0;
    while i < raw.len() {
        if is_number(&raw[i]) {
            for j in i + 2..(i + 6).min(raw.len()) {
                let between_ok = raw[i + 1..j].iter().all(|w| capital(w));
                let w = raw[j].to_lowercase();
                if !between_ok {
                    break;
                }
                if capital(&raw[j]) && STREET.iter().any(|(s, _)| *s == w) {
                    out.push(raw[i..=j].iter().map(|w| w.to_lowercase()).collect());
                    i = j;
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::context::Context;
    use serde_json::json;

    fn tools() -> ToolSet {
        let v = json!([
            {"type": "function", "function": {"name": "FindRestaurants", "x-kind": "search",
             "parameters": {"type": "object", "properties": {
                "cuisine": {"type": "string"}, "city": {"type": "string"},
                "price_range": {"type": "string", "enum": ["inexpensive", "moderate", "expensive", "very expensive", "dontcare"]},
                "has_live_music": {"type": "string", "enum": ["True", "False", "dontcare"]},
                "serves_alcohol": {"type": "string", "enum": ["True", "False", "dontcare"]}},
              "required": ["cuisine", "city"]}}},
            {"type": "function", "function": {"name": "ReserveRestaurant", "x-kind": "transaction",
             "parameters": {"type": "object", "properties": {
                "restaurant_name": {"type": "string"}, "city": {"type": "string"},
                "time": {"type": "string"}, "date": {"type": "string", "default": "2019-03-01"},
                "party_size": {"type": "string", "enum": ["1","2","3","4","5","6"], "default": "2"}},
              "required": ["restaurant_name", "city", "time"]}}}
        ]);
        ToolSet::from_openai(&v, "respond_to_user", &[], "t").unwrap()
    }

    fn call(name: &str, args: Value) -> ToolCall {
        ToolCall::new(name, args.as_object().unwrap().clone())
    }
    fn say(msg: &str) -> ToolCall {
        call("respond_to_user", json!({ "message": msg }))
    }

    const R1: &str = r#"{"restaurant_name": "71 Saint Peter", "city": "San Jose", "cuisine": "American", "has_live_music": "False", "serves_alcohol": "True", "price_range": "moderate", "phone_number": "408-971-8523", "street_address": "71 North San Pedro Street"}"#;
    const R2: &str = r#"{"restaurant_name": "Bazille", "city": "San Jose", "cuisine": "American", "has_live_music": "True", "serves_alcohol": "False", "price_range": "expensive", "phone_number": "408-261-5787", "street_address": "2400 Forest Avenue"}"#;

    /// A search for American food in San Jose that returned R1 and R2; the assistant offered
    /// 71 Saint Peter; `tail` continues the conversation.
    fn ctx_with(tail: Value) -> Context {
        let mut msgs = vec![
            json!({"role": "user", "content": "I want American food in San Jose, somewhere with live music"}),
            json!({"role": "assistant", "tool_calls": [{"function": {"name": "FindRestaurants", "arguments": {"city": "San Jose", "cuisine": "American"}}}]}),
            json!({"role": "tool", "content": format!("[{R1}, {R2}]")}),
            json!({"role": "assistant", "tool_calls": [{"function": {"name": "respond_to_user", "arguments": {"message": "I found 2 restaurants. 71 Saint Peter is nice."}}}]}),
        ];
        msgs.extend(tail.as_array().cloned().unwrap_or_default());
        Context::from_messages(&Value::Array(msgs), "respond_to_user").unwrap()
    }

    fn judge_with<T>(f: impl FnOnce(&Rubric<'_>) -> T) -> T {
        let t = tools();
        // The restaurant task file's synonyms: the judge has none of its own.
        let task = crate::task::Task::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks/restaurants.md"),
        )
        .unwrap();
        let n = Normalizer::new("2019-03-01", &task.settings.synonyms).unwrap();
        let other = Context::from_messages(
            &json!([{"role": "user", "content": "x"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "FindRestaurants", "arguments": {}}}]},
                    {"role": "tool", "content": "[{\"restaurant_name\": \"Golden Dragon Palace\", \"city\": \"Oakland\"}]"}]),
            "respond_to_user",
        )
        .unwrap();
        let base = ctx_with(json!([]));
        let lex = Lexicon::build([&other, &base]);
        let r = Rubric::new(&t, &n, "respond_to_user", lex);
        f(&r)
    }

    fn verdict(ctx: &Context, reference: &ToolCall, pred: &ToolCall) -> Verdict {
        judge_with(|r| r.judge(ctx, reference, pred))
    }

    #[test]
    fn function_must_match() {
        let ctx = ctx_with(json!([]));
        let v = verdict(&ctx, &say("hi"), &call("FindRestaurants", json!({})));
        assert!(!v.good);
        assert!(
            v.reason
                .contains("called FindRestaurants, the reference calls respond_to_user"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn service_arguments_table() {
        let ctx = ctx_with(json!([
            {"role": "user", "content": "Book 71 Saint Peter for two at six in the evening on March 3rd"}
        ]));
        let reference = call(
            "ReserveRestaurant",
            json!({"restaurant_name": "71 Saint Peter", "city": "San Jose", "time": "18:00", "date": "2019-03-03", "party_size": "2"}),
        );
        let cases: &[(Value, bool, &str)] = &[
            (
                json!({"restaurant_name": "71 saint peter", "city": "San Jose", "time": "6:00 PM", "date": "March 3rd", "party_size": "two"}),
                true,
                "every argument the same",
            ),
            (
                json!({"time": "6 pm", "party_size": 2, "date": "the 3rd", "city": "san jose", "restaurant_name": "71 Saint Peter"}),
                true,
                "every argument the same",
            ),
            (
                json!({"restaurant_name": "Bazille", "city": "San Jose", "time": "18:00", "date": "2019-03-03", "party_size": "2"}),
                false,
                "restaurant_name is \"Bazille\"",
            ),
            (
                json!({"restaurant_name": "71 Saint Peter", "city": "Oakland", "time": "18:00", "date": "2019-03-03", "party_size": "2"}),
                false,
                "city is \"Oakland\"",
            ),
            (
                json!({"restaurant_name": "71 Saint Peter", "city": "San Jose", "time": "19:00", "date": "2019-03-03", "party_size": "2"}),
                false,
                "time is",
            ),
            (
                json!({"restaurant_name": "71 Saint Peter", "city": "San Jose", "time": "18:00", "party_size": "2"}),
                false,
                "date is missing",
            ),
            (
                json!({"restaurant_name": "71 Saint Peter", "city": "San Jose", "time": "18:00", "date": "2019-03-03", "party_size": "2", "smoking": "no"}),
                false,
                "not a parameter",
            ),
        ];
        for (args, good, why) in cases {
            let v = verdict(&ctx, &reference, &call("ReserveRestaurant", args.clone()));
            assert_eq!(v.good, *good, "{args}: {}", v.reason);
            assert!(v.reason.contains(why), "{args}: {} (want {why})", v.reason);
        }
    }

    #[test]
    fn optional_arguments_the_reference_omits() {
        let ctx = ctx_with(
            json!([{"role": "user", "content": "Book 71 Saint Peter at 6 pm for 4 people"}]),
        );
        let reference = call(
            "ReserveRestaurant",
            json!({"restaurant_name": "71 Saint Peter", "city": "San Jose", "time": "18:00"}),
        );
        let base =
            json!({"restaurant_name": "71 Saint Peter", "city": "San Jose", "time": "18:00"});
        let with = |k: &str, v: &str| {
            let mut a = base.clone();
            a[k] = json!(v);
            call("ReserveRestaurant", a)
        };
        // The schema default, a value the user said, and "dontcare" are fine; an invented date is not.
        assert!(verdict(&ctx, &reference, &with("date", "2019-03-01")).good);
        assert!(verdict(&ctx, &reference, &with("party_size", "4")).good);
        let v = verdict(&ctx, &reference, &with("date", "2019-03-09"));
        assert!(
            !v.good && v.reason.contains("appears nowhere"),
            "{}",
            v.reason
        );
        // A yes/no filter is fine when the user raised the topic, invented otherwise.
        let find_ref = call(
            "FindRestaurants",
            json!({"city": "San Jose", "cuisine": "American"}),
        );
        let music = call(
            "FindRestaurants",
            json!({"city": "San Jose", "cuisine": "American", "has_live_music": "True"}),
        );
        let alcohol = call(
            "FindRestaurants",
            json!({"city": "San Jose", "cuisine": "American", "serves_alcohol": "True"}),
        );
        assert!(verdict(&ctx, &find_ref, &music).good);
        assert!(!verdict(&ctx, &find_ref, &alcohol).good);
    }

    #[test]
    fn synonyms_and_short_names() {
        let ctx = ctx_with(json!([]));
        let reference = call(
            "FindRestaurants",
            json!({"city": "San Francisco", "cuisine": "Barbecue"}),
        );
        let pred = call(
            "FindRestaurants",
            json!({"cuisine": "American", "city": "SF"}),
        );
        assert!(verdict(&ctx, &reference, &pred).good);
        let reference = call(
            "ReserveRestaurant",
            json!({"restaurant_name": "Bazille", "city": "San Jose", "time": "18:00"}),
        );
        for (name, good) in [
            ("Bazille Restaurant", true),
            ("The Bazille", true),
            ("Bazille Grill Oakland", false),
        ] {
            let pred = call(
                "ReserveRestaurant",
                json!({"restaurant_name": name, "city": "San Jose", "time": "18:00"}),
            );
            assert_eq!(verdict(&ctx, &reference, &pred).good, good, "{name}");
        }
        // "71 Saint" is unambiguous among the results.
        let reference = call(
            "ReserveRestaurant",
            json!({"restaurant_name": "71 Saint Peter", "city": "San Jose", "time": "18:00"}),
        );
        let pred = call(
            "ReserveRestaurant",
            json!({"restaurant_name": "71 Saint", "city": "San Jose", "time": "18:00"}),
        );
        assert!(verdict(&ctx, &reference, &pred).good);
    }

    #[test]
    fn replies_against_tool_results() {
        let ctx = ctx_with(json!([{"role": "user", "content": "Tell me more about it"}]));
        let reference = say("It serves alcohol.");
        let cases: &[(&str, bool, &str)] = &[
            (
                "71 Saint Peter serves alcohol and is moderately priced.",
                true,
                "fits the conversation",
            ),
            (
                "Sure! Would you like to book a table?",
                true,
                "fits the conversation",
            ),
            ("Sorry, I don't know more.", true, "fits the conversation"),
            ("They do not serve alcohol.", false, "does not have alcohol"),
            ("71 Saint Peter has live music.", false, "has live music"),
            (
                "Bazille has live music but does not serve alcohol.",
                true,
                "fits the conversation",
            ),
            ("Bazille serves wine.", false, "serves_alcohol = False"),
            ("They don't have live music.", true, "fits the conversation"),
            ("Does it have live music?", true, "fits the conversation"),
            ("It is an expensive place.", false, "price_range = moderate"),
            ("Bazille is pricey.", true, "fits the conversation"),
            (
                "Their phone number is 408-971-8523.",
                true,
                "fits the conversation",
            ),
            (
                "Their phone number is 408-555-1234.",
                false,
                "phone number 4085551234",
            ),
            (
                "They are at 71 N San Pedro St.",
                true,
                "fits the conversation",
            ),
            ("They are at 12 Market Street.", false, "address"),
            (
                "Golden Dragon Palace is a great choice.",
                false,
                "golden dragon palace",
            ),
            ("", false, "no message"),
        ];
        for (msg, good, why) in cases {
            let v = verdict(&ctx, &reference, &say(msg));
            assert_eq!(v.good, *good, "{msg:?}: {}", v.reason);
            assert!(v.reason.contains(why), "{msg:?}: {} (want {why})", v.reason);
        }
    }

    #[test]
    fn replies_about_bookings() {
        let reserve = |result: &str| {
            ctx_with(json!([
                {"role": "user", "content": "Yes, book it at 6 pm"},
                {"role": "assistant", "tool_calls": [{"function": {"name": "ReserveRestaurant", "arguments": {"restaurant_name": "71 Saint Peter", "city": "San Jose", "time": "18:00"}}}]},
                {"role": "tool", "content": result}
            ]))
        };
        let ok = reserve(
            r#"[{"restaurant_name": "71 Saint Peter", "city": "San Jose", "time": "18:00", "date": "2019-03-01"}]"#,
        );
        let failed = reserve("[]");
        let other_time = reserve(
            r#"[{"restaurant_name": "71 Saint Peter", "city": "San Jose", "time": "18:30"}]"#,
        );
        let r = say("Your table is booked.");
        let cases: &[(&Context, &str, bool)] = &[
            (&ok, "Your reservation is confirmed.", true),
            (&ok, "Sorry, the reservation was not successful.", false),
            (&ok, "Sorry, I was unable to make the booking.", false),
            (&failed, "Sorry, I was unable to make the booking.", true),
            (&failed, "Your table has been booked successfully!", false),
            (
                &failed,
                "Sorry the reservation was not successful. Can I help with anything else?",
                true,
            ),
            // A record at another time says neither; the reference (booked) says which.
            (&other_time, "Your reservation is confirmed.", true),
            (&other_time, "Sorry, that failed.", false),
            (&other_time, "What else can I do for you?", false),
        ];
        for (ctx, msg, good) in cases {
            let v = verdict(ctx, &r, &say(msg));
            assert_eq!(v.good, *good, "{msg:?}: {}", v.reason);
        }
        // No booking call anywhere: claiming one is a contradiction.
        let none = ctx_with(json!([{"role": "user", "content": "ok"}]));
        let v = verdict(&none, &r, &say("Your table has been reserved."));
        assert!(
            !v.good && v.reason.contains("no booking call"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn replies_about_search_outcomes() {
        let search = |result: &str| {
            Context::from_messages(
                &json!([
                    {"role": "user", "content": "Italian in Oakland"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "FindRestaurants", "arguments": {"city": "Oakland", "cuisine": "Italian"}}}]},
                    {"role": "tool", "content": result}
                ]),
                "respond_to_user",
            )
            .unwrap()
        };
        let three = search(
            r#"[{"restaurant_name": "A Cena"}, {"restaurant_name": "Belotti"}, {"restaurant_name": "Bellanico"}]"#,
        );
        let empty = search("[]");
        let r = say("x");
        let cases: &[(&Context, &str, bool)] = &[
            (&three, "I found 3 restaurants. A Cena is nice.", true),
            (&three, "I have one in Oakland called Belotti.", true),
            (&three, "I found 5 restaurants for you.", false),
            (&three, "Sorry, I couldn't find any restaurants.", false),
            (&empty, "Sorry, I couldn't find any restaurants.", true),
            (&empty, "I found 2 restaurants for you.", false),
            (&empty, "Golden Dragon Palace is available.", false),
        ];
        for (ctx, msg, good) in cases {
            let v = verdict(ctx, &r, &say(msg));
            assert_eq!(v.good, *good, "{msg:?}: {}", v.reason);
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(
            phone_numbers("call 408-971-8523 or (650) 330-1782 on 2019-03-01"),
            vec!["4089718523", "6503301782"]
        );
        assert!(phone_numbers("a table for 2 at Amber at 11:00 2019-03-01.").is_empty());
        assert!(phone_numbers("at 19:00 2019-03 and 7:30 pm 2019-03-12").is_empty());
        assert_eq!(
            phone_numbers("at 19:00, call 408 971 8523"),
            vec!["4089718523"]
        );
        assert_eq!(
            addresses("It is at 71 North San Pedro Street, near 5 people."),
            vec![vec!["71", "north", "san", "pedro", "street"]]
        );
        assert!(addresses("I have 2 options that way").is_empty());
        assert_eq!(
            count_claim(&["i", "found", "10", "restaurants"]),
            Some(Count::Exactly(10))
        );
        assert_eq!(count_claim(&["i", "have", "one", "in", "oakland"]), None);
        assert_eq!(count_claim(&["i", "have", "three", "suggestions"]), None);
        assert_eq!(
            count_claim(&["there", "are", "4", "bedrooms"]),
            Some(Count::Exactly(4))
        );
        assert_eq!(
            count_claim(&["i", "found", "a", "few", "options"]),
            Some(Count::Several)
        );
        assert_eq!(
            count_claim(&["i", "found", "1", "restaurants"]),
            Some(Count::Exactly(1))
        );
        assert_eq!(count_claim(&["they", "are", "4", "stars"]), None);
    }
}
