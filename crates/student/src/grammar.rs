//! Schema-constrained decoding: a per-sequence state machine over the template's call layout that
//! says which tokens may come next, so every decoded call names an existing function, uses only
//! its argument keys (each at most once, every required one present), picks enum values among the
//! allowed ones and writes free text token by token up to a closer.
//!
//! Arguments that training showed to be copies of the conversation (a restaurant's name, a city,
//! a time the user said; see [`span_params`](crate::train::span_params)) are decoded as *spans*:
//! each token must continue a run of copyable prompt tokens, so the value is a contiguous piece
//! of the conversation, and it may end only where a word ends there. That removes invented
//! values and the student's most frequent argument error, a copy that runs on into the next
//! sentence (`Bombay to Goa at 17:30? Is there anything else…`). A span value never crosses a
//! sentence end (an abbreviation such as "St." is no end), a comma or a question mark, and
//! ending it where it is a whole copyable unit (a result's value, `Aperto`) gets a bonus of
//! `whole_bonus` ([`DecodeParams`]). When the model is much surer of a token that starts no span (the user said
//! "SF", the call needs `San Francisco`), the value is written freely instead.
//!
//! A *categorical* argument (a cuisine, a city: few training values that repeat; see
//! [`vocab_params`](crate::train::vocab_params)) is a span argument whose sources also include
//! its training values, each as a whole: the user's "ramen" may become `Japanese` and "SFO"
//! `San Francisco`, while a piece of a word (`plings` from "Dumplings") or a date stays out.
//!
//! An optional argument that training passed only when the user's words asked for it (a price
//! range; see [`evidence_params`](crate::train::evidence_params)) is opened only when the
//! user's messages hold one of its evidence words, so the student no longer adds a price range
//! to a search where nobody mentioned a price.
//!
//! The prompt labels some values with a key: a result field's value follows ` key:`, an earlier
//! call's argument follows ` key<|val|>`. A *keyed* argument (one whose training values nearly
//! always repeat such a value; see [`keyed_params`](crate::train::keyed_params)), such as a
//! booking's `restaurant_name`, is never copied from a value labelled with another key (the
//! cuisine `Mexican`) nor, once the prompt labels some value with its own key, from the
//! assistant's sentences (`Korean` from "a Korean place called Restaurant Chungdam"; the user
//! may still name another), and continuing a value labelled with its own key gets
//! `label_bonus` (so the result's `Bombay To Goa` wins over `Bombay to Goa at 17:30` in the
//! user's sentence).
//!
//! A categorical value the user asks for by a word that training learned to mean it (an
//! *alias*: "pizza" for `Italian`, "SF" for `San Francisco`; see
//! [`alias_params`](crate::train::alias_params)) counts as said.
//!
//! This is the tiny template's layout, where names, keys and values are separated by special
//! tokens. Hugging Face students write calls as JSON text instead: [`crate::json_call`] applies
//! the structural rules (names, keys, enums, digits, lengths) to that layout, byte by byte; the
//! span, vocabulary, alias and evidence rules are this layout's only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Map, Value};
use tracelab_core::conversation::ToolCall;
use tracelab_core::job::DecodeParams;

use crate::ground::Grounds;
use crate::normalize::folded;
use crate::sampling::Sampler;
use crate::template::{ChatTemplate, FnSpec, ValueKind};
use crate::train::{KeyedParams, SpanShape, ValueRules};

/// Tokens allowed next.
#[derive(Debug, Clone, PartialEq)]
pub enum Allowed {
    /// Exactly these tokens.
    Only(Vec<u32>),
    /// Any ordinary (non-special) token except `banned`, or one of `closers`.
    Text {
        /// Closers allowed now.
        closers: Vec<u32>,
        /// Sorted: tokens that would repeat a bigram of the value (copy loops such as `Zabu Zabu
        /// Zabu`) and, in a grounded reply, tokens towards a number or name the prompt does
        /// not hold ([`crate::ground`]).
        banned: Vec<u32>,
    },
    /// A token of digits, or one of these.
    Digits(Vec<u32>),
    /// A span value: a continuation of the span or a closer; at a value's first token (`free`)
    /// also any ordinary token, taken only when the model prefers it by `free_margin`.
    Span {
        /// Tokens that continue the span.
        continuations: Vec<u32>,
        /// Closers allowed now.
        closers: Vec<u32>,
        /// Closers get `whole_bonus`: the value so far is a whole copyable unit.
        whole: bool,
        /// Continuations with a bonus to their log-probability: those that follow a value
        /// labelled with this argument's own key (a result field or an earlier call's argument
        /// of the same name) get `label_bonus`, those of a learned value the user said
        /// `said_bonus` ([`DecodeParams`]).
        preferred: Vec<(u32, f32)>,
        /// The value may still be written freely instead.
        free: bool,
    },
}

// The bonuses are [`DecodeParams`] (`[predict.decoding]`):
// - `whole_bonus`, for ending a span value where it is a whole copyable unit;
// - `label_bonus`, for continuing a value the prompt labels with the argument's own key: a
//   reservation's `restaurant_name` copies a result's `restaurant_name`, not the same words from
//   the assistant's sentence around it;
// - `said_bonus`, for a categorical argument's learned value that the user said (in any case):
//   the student, trained on targets that are half categories the user never said (`Japanese`
//   for "ramen"), otherwise writes its most frequent values (`American` for "asian food");
// - `free_margin`, how much likelier (in log-probability) the best free-text token must be than
//   the best span start for a span argument to be written freely.

/// Adds `t` to `preferred` with `bonus`, keeping the larger bonus of a token listed twice.
fn prefer(preferred: &mut Vec<(u32, f32)>, t: u32, bonus: f32) {
    match preferred.iter_mut().find(|(p, _)| *p == t) {
        Some((_, b)) => *b = b.max(bonus),
        None => preferred.push((t, bonus)),
    }
}

/// The text of a prompt, a space where a special token stands (so that `key:` and a value
/// around a `<|val|>` stay apart).
fn prompt_text(tokens: &[u32], lexicon: &Lexicon) -> String {
    tokens
        .iter()
        .map(|&t| match lexicon.texts[t as usize].as_str() {
            "" => " ",
            text => text,
        })
        .collect()
}

/// Per-token facts span decoding needs, computed once per vocabulary.
#[derive(Debug, Clone)]
pub struct Lexicon {
    /// Decodes to text starting with a space (a new word).
    starts_word: Vec<bool>,
    /// Decodes to text starting with a letter or digit (continues the previous word).
    continues_word: Vec<bool>,
    /// Decoded text of each token.
    texts: Vec<String>,
    /// Contains a letter.
    lettered: Vec<bool>,
    /// Its first character after an optional leading space is a digit.
    starts_digit: Vec<bool>,
    /// Its first character after an optional leading space is a lower-case letter.
    starts_lower: Vec<bool>,
    /// Contains a question or exclamation mark or a comma: a span never includes one.
    breaks: Vec<bool>,
}

impl Lexicon {
    /// The folded word right before position `j` of `run` (the tokens back to the one that
    /// starts it); none at the run's start.
    fn word_before(&self, run: &[u32], j: usize) -> Option<String> {
        let mut k = j;
        let mut text = String::new();
        while k > 0 {
            k -= 1;
            let t = run[k] as usize;
            text.insert_str(0, &self.texts[t]);
            if self.starts_word[t] && self.lettered[t] {
                break;
            }
        }
        folded(&text).split_whitespace().last().map(str::to_string)
    }

    /// Classifies every token of the template's vocabulary.
    pub fn new(tpl: &ChatTemplate) -> Lexicon {
        let texts: Vec<String> = (0..tpl.vocab)
            .map(|t| {
                if tpl.is_special[t] {
                    String::new()
                } else {
                    tpl.decode(&[t as u32])
                }
            })
            .collect();
        Lexicon {
            starts_word: texts.iter().map(|s| s.starts_with(' ')).collect(),
            continues_word: texts
                .iter()
                .map(|s| s.chars().next().is_some_and(char::is_alphanumeric))
                .collect(),
            breaks: texts.iter().map(|s| s.contains(['?', '!', ','])).collect(),
            lettered: texts
                .iter()
                .map(|s| s.chars().any(char::is_alphabetic))
                .collect(),
            starts_lower: texts
                .iter()
                .map(|s| {
                    s.strip_prefix(' ')
                        .unwrap_or(s)
                        .starts_with(char::is_lowercase)
                })
                .collect(),
            starts_digit: texts
                .iter()
                .map(|s| {
                    s.strip_prefix(' ')
                        .unwrap_or(s)
                        .starts_with(|c: char| c.is_ascii_digit())
                })
                .collect(),
            texts,
        }
    }

    /// Whether `prefix` ends a sentence: it ends with a full stop after a word of three or more
    /// letters or one with a digit ("… in Milpitas.", "… on 2019-03-01." but not "St." or
    /// "P.F.").
    fn ends_sentence(&self, prefix: &[u32]) -> bool {
        let text: String = prefix
            .iter()
            .map(|&t| self.texts[t as usize].as_str())
            .collect();
        let Some(body) = text.strip_suffix('.') else {
            return false;
        };
        let word = body.rsplit(char::is_whitespace).next().unwrap_or(body);
        word.chars().any(|c| c.is_ascii_digit())
            || body
                .chars()
                .rev()
                .take_while(|c| c.is_alphanumeric())
                .count()
                >= 3
    }
}

/// What span decoding needs for every prompt of a model: the lexicon and which parameters are
/// spans.
#[derive(Debug, Clone)]
pub struct SpanSetup {
    lexicon: Arc<Lexicon>,
    params: Arc<Vec<Vec<Option<SpanShape>>>>,
    labels: Arc<Labels>,
    vocab: Arc<Vocab>,
    roles: Arc<Roles>,
    /// Per function, per parameter: the words that must occur in the user's messages for it
    /// to be passed (see [`crate::train::evidence_params`]).
    evidence: Arc<Vec<Vec<Option<BTreeSet<String>>>>>,
    /// Per function, per parameter: the words after which its value does not start, the cues
    /// of the function's other span arguments that are not its own (see
    /// [`crate::train::cue_params`]).
    not_after: Arc<Vec<Vec<BTreeSet<String>>>>,
    decoding: DecodeParams,
    /// The reply function's index, when the tools have one.
    reply: Option<usize>,
    /// Per function: it has a required digits-shaped span argument (`feasible_calls`).
    needs_digits: Arc<Vec<bool>>,
    /// The words of the training replies (see [`crate::train::ValueRules::reply_words`]).
    reply_words: Arc<BTreeSet<String>>,
    /// Per function, per parameter: its value takes no word in lower case (see
    /// [`crate::train::cased_params`]).
    cased: Arc<Vec<Vec<bool>>>,
}

/// The special tokens that start a message or the tool header, and which of them starts a user
/// message: what a categorical value "said" means.
#[derive(Debug)]
struct Roles {
    starts: Vec<u32>,
    user: u32,
}

/// Per function, per parameter: its learned vocabulary (see [`crate::train::vocab_params`]).
type Vocab = Vec<Vec<Vec<LearnedValue>>>;

/// One value of a categorical argument's vocabulary.
#[derive(Debug, Clone)]
struct LearnedValue {
    /// Its tokens, as it would read after a space in the conversation.
    tokens: Vec<u32>,
    /// Its words folded (see [`folded`]), padded with a space on both sides.
    folded: String,
    /// User words that ask for it without saying it (see [`crate::train::alias_params`]).
    aliases: BTreeSet<String>,
}

/// How the prompt labels copyable values: the tokens right before a result field's value
/// (` key:`) or a call argument's value (` key<|val|>`), for every argument key of the service
/// functions (the reply's `message` labels nothing: its sentences mention every kind of value).
/// Only keyed parameters ([`crate::train::keyed_params`]) draw on the labels.
#[derive(Debug)]
struct Labels {
    /// Label patterns, each with the index of its key in `keys` and whether it labels an
    /// earlier call's argument (` key<|val|>`) rather than a result field (` key:`).
    patterns: Vec<(Vec<u32>, usize, bool)>,
    /// Per function, per parameter of a service: the index of its key.
    key_of: Vec<Vec<Option<usize>>>,
    /// Per function, per parameter: it is keyed (it draws on the labels).
    keyed: Vec<Vec<bool>>,
}

impl Labels {
    fn new(tpl: &ChatTemplate, keyed: &KeyedParams) -> Labels {
        let mut keys: Vec<String> = Vec::new();
        let mut patterns = Vec::new();
        let mut key_of = Vec::new();
        for f in &tpl.functions {
            let service = f.name != tpl.respond_name();
            let of_f = f.params.iter().map(|p| {
                if !service {
                    return None;
                }
                Some(match keys.iter().position(|k| *k == p.key) {
                    Some(i) => i,
                    None => {
                        keys.push(p.key.clone());
                        let i = keys.len() - 1;
                        patterns.push((tpl.encode(&format!(" {}:", p.key)), i, false));
                        let mut call = p.key_tokens.clone();
                        call.push(tpl.sp.val);
                        patterns.push((call, i, true));
                        i
                    }
                })
            });
            key_of.push(of_f.collect());
        }
        // Every key labels runs; only keyed parameters look at labels.
        let keyed = tpl
            .functions
            .iter()
            .map(|f| {
                let names = keyed.get(&f.name);
                f.params
                    .iter()
                    .map(|p| names.is_some_and(|k| k.contains(&p.key)))
                    .collect()
            })
            .collect();
        Labels {
            patterns,
            key_of,
            keyed,
        }
    }

    /// The key labelling a run that starts at `start` in `tokens`, and whether the label is an
    /// earlier call's argument.
    fn of_run(&self, tokens: &[u32], start: usize) -> Option<(usize, bool)> {
        let before = &tokens[..start];
        self.patterns
            .iter()
            .find(|(p, _, _)| !p.is_empty() && before.ends_with(p))
            .map(|&(_, k, call)| (k, call))
    }

    /// The key index of a function's parameter: any service parameter's, or (`keyed_only`)
    /// only a keyed one's.
    fn key(&self, func: usize, param: usize, keyed_only: bool) -> Option<usize> {
        if keyed_only && !self.keyed.get(func)?.get(param).copied()? {
            return None;
        }
        self.key_of.get(func)?.get(param).copied()?
    }
}

impl SpanSetup {
    /// From the model's value rules: its span parameters (function → argument names), those of
    /// them taken from values labelled with their own key, and the categorical ones'
    /// vocabularies; `decoding` holds the bonuses.
    /// The bonuses its spans are decoded with.
    pub fn decoding(&self) -> &DecodeParams {
        &self.decoding
    }

    pub fn new(tpl: &ChatTemplate, rules: &ValueRules, decoding: &DecodeParams) -> SpanSetup {
        // One entry per function of the template, per parameter, from a rule map keyed by
        // function and argument names.
        fn per_param<R, T>(
            tpl: &ChatTemplate,
            rule: &BTreeMap<String, BTreeMap<String, R>>,
            make: impl Fn(Option<&R>) -> T,
        ) -> Vec<Vec<T>> {
            tpl.functions
                .iter()
                .map(|f| {
                    let args = rule.get(&f.name);
                    f.params
                        .iter()
                        .map(|p| make(args.and_then(|a| a.get(&p.key))))
                        .collect()
                })
                .collect()
        }
        let params = per_param(tpl, &rules.span_params, |shape| shape.copied());
        let vocab: Vocab = tpl
            .functions
            .iter()
            .map(|f| {
                let values = rules.vocab_params.get(&f.name);
                let aliases = rules.alias_params.get(&f.name);
                f.params
                    .iter()
                    .map(|p| {
                        let aliases = aliases.and_then(|a| a.get(&p.key));
                        values
                            .and_then(|a| a.get(&p.key))
                            .into_iter()
                            .flatten()
                            .map(|v| LearnedValue {
                                tokens: tpl.encode(&format!(" {v}")),
                                folded: folded(v),
                                aliases: aliases
                                    .and_then(|a| a.get(v))
                                    .cloned()
                                    .unwrap_or_default(),
                            })
                            .filter(|v| !v.tokens.is_empty())
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let evidence = per_param(tpl, &rules.evidence_params, |words| words.cloned());
        // An argument's value does not start after a cue of another of the function's span
        // arguments, unless that word is its own cue too.
        let not_after: Vec<Vec<BTreeSet<String>>> = tpl
            .functions
            .iter()
            .map(|f| {
                let cues = rules.cue_params.get(&f.name);
                f.params
                    .iter()
                    .map(|p| {
                        let Some(cues) = cues else {
                            return BTreeSet::new();
                        };
                        let own = cues.get(&p.key);
                        cues.iter()
                            .filter(|(k, _)| *k != &p.key)
                            .flat_map(|(_, words)| words)
                            .filter(|w| own.is_none_or(|o| !o.contains(*w)))
                            .cloned()
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let needs_digits = tpl
            .functions
            .iter()
            .zip(&params)
            .map(|(f, shapes)| {
                f.required
                    .iter()
                    .any(|&p| shapes.get(p).copied().flatten() == Some(SpanShape::Digits))
            })
            .collect();
        SpanSetup {
            reply: tpl
                .functions
                .iter()
                .position(|f| f.name == tpl.respond_name()),
            needs_digits: Arc::new(needs_digits),
            reply_words: Arc::new(rules.reply_words.clone()),
            cased: Arc::new(
                tpl.functions
                    .iter()
                    .map(|f| {
                        let cased = rules.cased_params.get(&f.name);
                        f.params
                            .iter()
                            .map(|p| cased.is_some_and(|c| c.contains(&p.key)))
                            .collect()
                    })
                    .collect(),
            ),
            evidence: Arc::new(evidence),
            not_after: Arc::new(not_after),
            lexicon: Arc::new(Lexicon::new(tpl)),
            params: Arc::new(params),
            labels: Arc::new(Labels::new(tpl, &rules.keyed_params)),
            vocab: Arc::new(vocab),
            decoding: decoding.clone(),
            roles: Arc::new(Roles {
                starts: vec![
                    tpl.sp.tools,
                    tpl.sp.system,
                    tpl.sp.user,
                    tpl.sp.call,
                    tpl.sp.result,
                ],
                user: tpl.sp.user,
            }),
        }
    }

    /// The span source of one prompt.
    pub fn source(&self, tokens: &[u32], copyable: &[bool]) -> SpanSource {
        SpanSource::new(tokens, copyable, self)
    }
}

/// What span decoding of one prompt draws from.
#[derive(Debug, Clone)]
pub struct SpanSource {
    /// Maximal runs of copyable prompt tokens.
    runs: Vec<Vec<u32>>,
    /// The key labelling each run, if any (see [`Labels`]).
    run_keys: Vec<Option<usize>>,
    /// Whether each run is in a user's message.
    run_user: Vec<bool>,
    lexicon: Arc<Lexicon>,
    /// Per function of the template, per parameter: decoded as a span of this shape.
    params: Arc<Vec<Vec<Option<SpanShape>>>>,
    labels: Arc<Labels>,
    /// Learned vocabularies: more runs, each a whole value, for their parameter only.
    vocab: Arc<Vocab>,
    /// Per function, per parameter, per vocabulary value: whether the user's messages say it
    /// (in any case: "asian food" says `Asian`).
    said: Vec<Vec<Vec<bool>>>,
    /// Per function, per parameter: whether it may be passed (it needs no evidence, or the
    /// user's messages have some).
    evident: Vec<Vec<bool>>,
    /// Per function, per parameter: the words after which its value does not start.
    not_after: Arc<Vec<Vec<BTreeSet<String>>>>,
    /// The bonuses of span decoding.
    decoding: DecodeParams,
    /// What a reply may state (`ground_replies`), and the reply function's index.
    grounds: Option<(Grounds, usize)>,
    /// Per function: whether the prompt can give its required digits-shaped arguments a value
    /// (`feasible_calls`; all true when off).
    feasible: Vec<bool>,
    /// Per function, per parameter: its value takes no word in lower case.
    cased: Arc<Vec<Vec<bool>>>,
}

impl SpanSource {
    /// The copyable runs of a prompt, what its user messages say, and the model's rules.
    fn new(tokens: &[u32], copyable: &[bool], setup: &SpanSetup) -> SpanSource {
        let SpanSetup {
            lexicon,
            params,
            labels,
            vocab,
            roles,
            evidence,
            not_after,
            decoding,
            reply,
            needs_digits,
            reply_words,
            cased,
        } = setup;
        let mut runs = Vec::new();
        let mut run_keys = Vec::new();
        let mut run_user = Vec::new();
        let mut run = Vec::new();
        let mut start = 0;
        let mut in_user = false;
        // Keys that an earlier call in the prompt passed.
        let mut passed = BTreeSet::new();
        let mut close = |run: Vec<u32>, start: usize, in_user: bool| {
            let label = labels.of_run(tokens, start);
            if let Some((k, true)) = label {
                passed.insert(k);
            }
            runs.push(run);
            run_keys.push(label.map(|(k, _)| k));
            run_user.push(in_user);
        };
        for (i, (&t, &c)) in tokens.iter().zip(copyable).enumerate() {
            if roles.starts.contains(&t) {
                in_user = t == roles.user;
            }
            if c {
                if run.is_empty() {
                    start = i;
                }
                run.push(t);
            } else if !run.is_empty() {
                close(std::mem::take(&mut run), start, in_user);
            }
        }
        if !run.is_empty() {
            close(run, start, in_user);
        }
        // The user's words, each message folded on its own.
        let mut text = String::new();
        let mut message = String::new();
        let mut in_user = false;
        for &t in tokens {
            if roles.starts.contains(&t) {
                text.push_str(&folded(&std::mem::take(&mut message)));
                in_user = t == roles.user;
            } else if in_user {
                message.push_str(&lexicon.texts[t as usize]);
            }
        }
        text.push_str(&folded(&message));
        let user_words: BTreeSet<&str> = text.split_whitespace().collect();
        let said = vocab
            .iter()
            .map(|f| {
                f.iter()
                    .map(|values| {
                        values
                            .iter()
                            .map(|v| {
                                text.contains(&v.folded)
                                    || v.aliases.iter().any(|w| user_words.contains(w.as_str()))
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        // An optional argument is evidenced by the user's words, or by an earlier call that
        // passed it (a repeated search keeps its price range though the request that named it
        // is cut from the window).
        let evident = evidence
            .iter()
            .enumerate()
            .map(|(fi, f)| {
                f.iter()
                    .enumerate()
                    .map(|(pi, e)| {
                        e.as_ref()
                            .is_none_or(|e| e.iter().any(|w| user_words.contains(w.as_str())))
                            || labels
                                .key(fi, pi, false)
                                .is_some_and(|k| passed.contains(&k))
                    })
                    .collect()
            })
            .collect();
        let feasible = {
            // A digits-shaped value starts with a word-starting digit token of a run.
            let digits = runs.iter().flatten().any(|&t| {
                let t = t as usize;
                lexicon.starts_word[t]
                    && lexicon.starts_digit[t]
                    && !lexicon.lettered[t]
                    && !lexicon.breaks[t]
            });
            needs_digits
                .iter()
                .map(|&needs| !decoding.feasible_calls || !needs || digits)
                .collect()
        };
        SpanSource {
            runs,
            run_keys,
            run_user,
            lexicon: lexicon.clone(),
            params: params.clone(),
            labels: labels.clone(),
            vocab: vocab.clone(),
            said,
            evident,
            not_after: not_after.clone(),
            decoding: decoding.clone(),
            feasible,
            cased: cased.clone(),
            grounds: reply.filter(|_| decoding.ground_replies).map(|r| {
                let text = prompt_text(tokens, lexicon);
                (Grounds::new(&text, reply_words.clone()), r)
            }),
        }
    }

    /// Tokens a reply's value so far (`item`) may not go on with, and whether it may end now
    /// (see [`crate::ground`]); `None` unless `func` is the reply and replies are grounded.
    fn ungrounded(&self, func: usize, item: &[u32]) -> Option<(Vec<u32>, bool)> {
        let (grounds, reply) = self.grounds.as_ref()?;
        if func != *reply {
            return None;
        }
        let texts = &self.lexicon.texts;
        let value: String = item.iter().map(|&t| texts[t as usize].as_str()).collect();
        let every = grounds.open_matters(&value);
        let banned: Vec<u32> = texts
            .iter()
            .enumerate()
            .filter(|(_, piece)| !piece.is_empty() && (every || grounds.may_matter(piece)))
            .filter(|(_, piece)| !grounds.allows(&value, piece))
            .map(|(t, _)| t as u32)
            .collect();
        Some((banned, grounds.may_end(&value)))
    }

    /// Whether a value of the function's parameter takes no word in lower case.
    fn cased(&self, func: usize, param: usize) -> bool {
        self.cased
            .get(func)
            .and_then(|p| p.get(param))
            .copied()
            .unwrap_or(false)
    }

    /// The words after which a value of the function's parameter does not start.
    fn not_after(&self, func: usize, param: usize) -> &BTreeSet<String> {
        &self.not_after[func][param]
    }

    /// The vocabulary of a function's parameter (none for most) and which of its values the
    /// prompt says.
    fn vocab_of(&self, func: usize, param: usize) -> (&[LearnedValue], &[bool]) {
        let values = self
            .vocab
            .get(func)
            .and_then(|p| p.get(param))
            .map_or(&[][..], Vec::as_slice);
        let said = self
            .said
            .get(func)
            .and_then(|p| p.get(param))
            .map_or(&[][..], Vec::as_slice);
        (values, said)
    }

    /// The key index of a function's parameter, when the prompt's labels can name it.
    fn param_key(&self, func: usize, param: usize) -> Option<usize> {
        self.labels.key(func, param, true)
    }

    fn shape(&self, func: usize, param: usize) -> Option<SpanShape> {
        self.params.get(func).and_then(|p| p.get(param)).copied()?
    }

    /// Whether token `t` may begin a span value of `shape`: it starts a word, holds no break
    /// and, for digits-shaped values, starts with a digit.
    fn can_start(&self, t: u32, shape: SpanShape) -> bool {
        let lx = &self.lexicon;
        let t = t as usize;
        lx.starts_word[t]
            && !lx.breaks[t]
            && (shape != SpanShape::Digits || (!lx.lettered[t] && lx.starts_digit[t]))
    }

    /// What may follow `prefix` as a span of some run (see [`Next`]). An empty prefix may start
    /// at any word start. `key`: the argument's key, when the prompt labels values with it;
    /// where some run carries that label, the sources are those runs and the user's messages
    /// (not runs labelled with another key, such as a cuisine, a city or a time, nor the
    /// assistant's sentences). `vocab`: the argument's vocabulary, whole
    /// values that are runs too (a value starts only at their start), and which of them the
    /// prompt says: those are preferred like a value labelled with the argument's key.
    /// `not_after`: the words after which the value does not start (other arguments' cues);
    /// `cased`: the value's words do not begin in lower case.
    fn next(
        &self,
        prefix: &[u32],
        shape: SpanShape,
        key: Option<usize>,
        (vocab, said): (&[LearnedValue], &[bool]),
        not_after: &BTreeSet<String>,
        cased: bool,
    ) -> Next {
        let lx = &self.lexicon;
        // A cased value's words do not begin in lower case ("Foster city is" is no city),
        // whether the token brings its word's space or follows one.
        let after_space = prefix
            .last()
            .is_some_and(|&t| lx.texts[t as usize].ends_with(' '));
        let lower_word = |t: u32| {
            let t = t as usize;
            cased && lx.starts_lower[t] && (lx.starts_word[t] || after_space)
        };
        // Digits-shaped values take no token with a letter; word-shaped ones may end only once
        // they have a letter.
        let shaped_end =
            shape != SpanShape::Words || prefix.iter().any(|&t| lx.lettered[t as usize]);
        let mut next = Vec::new();
        let mut preferred = Vec::new();
        let mut can_end = false;
        let mut whole = false;
        let sentence_end = lx.ends_sentence(prefix);
        let labelled = key.filter(|k| self.run_keys.contains(&Some(*k)));
        let prompt = self
            .runs
            .iter()
            .zip(&self.run_keys)
            .zip(&self.run_user)
            .map(|((r, k), u)| (r, *k, false, false, *u));
        let learned = vocab
            .iter()
            .zip(said)
            .map(|(v, &said)| (&v.tokens, None, true, said, false));
        // A categorical argument whose values all begin with a letter (a cuisine) does not
        // begin at a number in the conversation (a date).
        let letters_first =
            !vocab.is_empty() && vocab.iter().all(|v| !lx.starts_digit[v.tokens[0] as usize]);
        // Nothing but spaces so far: the next token begins the value's first word.
        let blank = prefix
            .iter()
            .all(|&t| lx.texts[t as usize].trim().is_empty());
        for (run, run_key, whole_only, said, user) in prompt.chain(learned) {
            let own = labelled.is_some() && run_key == labelled;
            if labelled.is_some() && run_key.is_some() && !own {
                continue;
            }
            // Where the prompt labels values with the argument's key, the assistant's own
            // sentences are no source: their words around a name (`Korean` in "a Korean place
            // called Restaurant Chungdam") are not the name. The user may still name another.
            if labelled.is_some() && !own && !said && !user {
                continue;
            }
            let bonus = match (own, said) {
                (_, true) => Some(self.decoding.said_bonus),
                (true, false) => Some(self.decoding.label_bonus),
                (false, false) => None,
            };
            if prefix.is_empty() && whole_only {
                if self.can_start(run[0], shape) {
                    next.push(run[0]);
                    if let Some(b) = bonus {
                        prefer(&mut preferred, run[0], b);
                    }
                }
                continue;
            }
            // Not after another argument's cue ("to Denver" is no origin).
            let cued_away = |j: usize| {
                !not_after.is_empty()
                    && lx
                        .word_before(run, j)
                        .is_some_and(|w| not_after.contains(&w))
            };
            if prefix.is_empty() {
                let starts = run.iter().enumerate().filter(|&(j, &t)| {
                    let digit_for_letters = letters_first && lx.starts_digit[t as usize];
                    self.can_start(t, shape)
                        && !digit_for_letters
                        && !lower_word(t)
                        && !cued_away(j)
                });
                for (_, &t) in starts {
                    next.push(t);
                    // Only the value's first word starts it: a bonus for any word of a long
                    // labelled value would favour starting in its middle.
                    if let (Some(b), true) = (bonus, run[0] == t) {
                        prefer(&mut preferred, t, b);
                    }
                }
                continue;
            }
            if run.len() < prefix.len() {
                continue;
            }
            let last_start = if whole_only {
                0
            } else {
                run.len() - prefix.len()
            };
            for i in 0..=last_start {
                if run[i..i + prefix.len()] != *prefix || cued_away(i) {
                    continue;
                }
                let end = i + prefix.len();
                match run.get(end) {
                    None => {
                        can_end |= shaped_end;
                        whole |= i == 0 && shaped_end;
                    }
                    Some(&t) => {
                        let t_us = t as usize;
                        if !lx.continues_word[t_us] {
                            can_end |= shaped_end;
                        }
                        // Neither past a sentence's end nor taking its full stop along.
                        let crosses_sentence = sentence_end && lx.starts_word[t_us]
                            || lx.texts[t_us].ends_with('.')
                                && lx.ends_sentence(&[prefix, &[t]].concat());
                        let wrong_kind = (shape == SpanShape::Digits && lx.lettered[t_us])
                            || (letters_first && blank && lx.starts_digit[t_us]);
                        let fits = !wrong_kind && !lower_word(t);
                        if !lx.breaks[t_us] && !crosses_sentence && fits {
                            next.push(t);
                            if let (Some(b), 0) = (bonus, i) {
                                prefer(&mut preferred, t, b);
                            }
                        }
                    }
                }
            }
        }
        // Distinct, in prompt order (the order breaks ties between equally likely tokens).
        let mut continuations = Vec::with_capacity(next.len());
        for t in next {
            if !continuations.contains(&t) {
                continuations.push(t);
            }
        }
        Next {
            continuations,
            preferred,
            can_end,
            whole,
        }
    }
}

/// What may follow a span value's prefix.
struct Next {
    /// Tokens that continue it as a span of some run.
    continuations: Vec<u32>,
    /// Those with a bonus (see [`Allowed::Span`]).
    preferred: Vec<(u32, f32)>,
    /// It may end here: it is a whole-word span somewhere, of the value's shape.
    can_end: bool,
    /// It is a whole run.
    whole: bool,
}

#[derive(Debug, Clone)]
enum Phase {
    Name,
    Key,
    Value(usize),
    Done,
}

/// The decoding state of one sequence.
#[derive(Debug, Clone)]
pub struct CallState {
    phase: Phase,
    func: Option<usize>,
    used: Vec<usize>,
    item: Vec<u32>,
    args: Map<String, Value>,
    generated: usize,
    /// Span decoding's source, where the model has span parameters.
    spans: Option<SpanSource>,
    /// The current span parameter's value is written freely (the model preferred it).
    free_value: bool,
    /// Per template function, whether the call may name it (all when `None`): a served
    /// request's tools and `tool_choice`.
    callable: Option<Vec<bool>>,
}

/// Prefix-trie query over candidate sequences (token ids here, bytes in [`crate::json_call`]):
/// the items that may follow `prefix`, and whether `prefix` is itself complete.
pub(crate) fn trie_next<'a, T: Copy + PartialEq + 'a>(
    cands: impl Iterator<Item = &'a [T]>,
    prefix: &[T],
) -> (Vec<T>, bool) {
    let mut next = Vec::new();
    let mut complete = false;
    for c in cands {
        if c.len() >= prefix.len() && c[..prefix.len()] == *prefix {
            if c.len() == prefix.len() {
                complete = true;
            } else if !next.contains(&c[prefix.len()]) {
                next.push(c[prefix.len()]);
            }
        }
    }
    (next, complete)
}

impl Allowed {
    /// The one token allowed, where the constraints leave no choice (a function name's or key's
    /// remaining tokens, `<|val|>` after a key, the only continuation of a span): any choice,
    /// greedy or drawn, takes it whatever the scores.
    pub fn forced(&self) -> Option<u32> {
        let one = |list: &[u32]| {
            list.first()
                .copied()
                .filter(|&t| list.iter().all(|&u| u == t))
        };
        match self {
            Allowed::Only(list) => one(list),
            Allowed::Span {
                continuations,
                closers,
                free: false,
                ..
            } if closers.is_empty() => one(continuations),
            _ => None,
        }
    }
}

/// Limits that keep a call short enough to finish within the token budget.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most tokens in one free-text value.
    pub max_value_tokens: usize,
    /// Most tokens after `<|call|>` in all.
    pub max_new_tokens: usize,
    /// Feed the tokens the constraints force (see [`Allowed::forced`]) together with the token
    /// before them, in one forward pass; the same tokens come out either way (false only to
    /// measure what it saves).
    pub forced_runs: bool,
}

impl Limits {
    /// The room a prompt leaves after it: a whole call and its `<|call|>`-closing token
    /// (`ChatTemplate::prompt`'s reserve, and the positions a decoding cache makes room for).
    pub fn room(&self) -> usize {
        self.max_new_tokens + 1
    }
}

impl Default for CallState {
    fn default() -> Self {
        Self::new()
    }
}

impl CallState {
    /// A fresh state, right after `<|call|>`.
    pub fn new() -> Self {
        CallState {
            phase: Phase::Name,
            func: None,
            used: Vec::new(),
            item: Vec::new(),
            args: Map::new(),
            generated: 0,
            spans: None,
            free_value: false,
            callable: None,
        }
    }

    /// The same state, allowed to name only the template functions `callable` marks (at least
    /// one must be marked).
    pub fn only(self, callable: Vec<bool>) -> Self {
        debug_assert!(
            callable.iter().any(|&c| c),
            "some function must stay callable"
        );
        CallState {
            callable: Some(callable),
            ..self
        }
    }

    /// Whether the call may name template function `i`.
    fn may_call(&self, i: usize) -> bool {
        self.callable
            .as_ref()
            .is_none_or(|c| c.get(i).copied().unwrap_or(false))
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// A fresh state that decodes span parameters from `spans`.
    pub fn with_spans(spans: SpanSource) -> Self {
        CallState {
            spans: Some(spans),
            ..CallState::new()
        }
    }

    /// The span source and the value's shape, when the current value is decoded as a span.
    fn span_here(&self) -> Option<(&SpanSource, SpanShape)> {
        let Phase::Value(p) = self.phase else {
            return None;
        };
        let spans = self.spans.as_ref()?;
        let shape = spans.shape(self.func?, p)?;
        (!self.free_value).then_some((spans, shape))
    }

    /// Whether the call is complete.
    pub fn done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Whether the next token is an argument value token (or the closer after one): the positions
    /// where the copy head is mixed in.
    pub fn in_value(&self) -> bool {
        matches!(self.phase, Phase::Value(_))
    }

    /// Whether parameter `p` of the chosen function may still be passed: unused, and required or
    /// evidenced by the user's words (where span decoding knows them).
    fn open(&self, f: &FnSpec, p: usize) -> bool {
        let func = self.func.expect("function chosen");
        !self.used.contains(&p)
            && (f.required.contains(&p)
                || self.spans.as_ref().is_none_or(|s| {
                    s.evident
                        .get(func)
                        .and_then(|e| e.get(p))
                        .copied()
                        .unwrap_or(true)
                }))
    }

    fn missing_required(&self, f: &FnSpec) -> Vec<usize> {
        f.required
            .iter()
            .copied()
            .filter(|r| !self.used.contains(r))
            .collect()
    }

    /// Tokens still needed, at least, to finish the call validly from a closed value.
    fn min_finish(&self, tpl: &ChatTemplate, f: &FnSpec) -> usize {
        self.missing_required(f)
            .iter()
            .map(|&p| 2 + f.params[p].key_tokens.len() + 1 + choice_len(&f.params[p].kind))
            .sum::<usize>()
            + 1
            + usize::from(tpl.sp.end == tpl.sp.pad)
    }

    fn closers(&self, tpl: &ChatTemplate, f: &FnSpec, wrap_up: bool) -> Vec<u32> {
        let missing = self.missing_required(f);
        let mut c = Vec::new();
        let optional_left = (0..f.params.len()).any(|p| self.open(f, p));
        if !missing.is_empty() || (optional_left && !wrap_up) {
            c.push(tpl.sp.arg);
        }
        if missing.is_empty() {
            c.push(tpl.sp.end);
        }
        c
    }

    /// The tokens allowed next.
    pub fn allowed(&self, tpl: &ChatTemplate, lim: &Limits) -> Allowed {
        match &self.phase {
            Phase::Done => Allowed::Only(vec![tpl.sp.pad]),
            Phase::Name => {
                // A function the prompt cannot give its required values is not named, unless
                // no callable one can be.
                let feasible = |i: usize| {
                    self.spans
                        .as_ref()
                        .is_none_or(|s| s.feasible.get(i).copied().unwrap_or(true))
                };
                let any = (0..tpl.functions.len()).any(|i| self.may_call(i) && feasible(i));
                let callable = || {
                    tpl.functions
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| self.may_call(*i) && (!any || feasible(*i)))
                        .map(|(_, f)| f)
                };
                let (mut next, complete) =
                    trie_next(callable().map(|f| f.name_tokens.as_slice()), &self.item);
                if complete {
                    let f = callable()
                        .find(|f| f.name_tokens == self.item)
                        .expect("complete name");
                    if !f.params.is_empty() {
                        next.push(tpl.sp.arg);
                    }
                    if f.required.is_empty() {
                        next.push(tpl.sp.end);
                    }
                }
                Allowed::Only(next)
            }
            Phase::Key => {
                let f = &tpl.functions[self.func.expect("function chosen")];
                let left = lim.max_new_tokens.saturating_sub(self.generated);
                let wrap_up = self.item.is_empty() && left <= self.min_finish(tpl, f) + 4;
                let missing = self.missing_required(f);
                let keys = (0..f.params.len())
                    .filter(|&p| self.open(f, p) && (!wrap_up || missing.contains(&p)))
                    .map(|p| f.params[p].key_tokens.as_slice());
                let (mut next, complete) = trie_next(keys, &self.item);
                if complete {
                    next.push(tpl.sp.val);
                }
                Allowed::Only(next)
            }
            Phase::Value(p) => {
                let f = &tpl.functions[self.func.expect("function chosen")];
                let left = lim.max_new_tokens.saturating_sub(self.generated);
                let wrap_up = left <= self.min_finish(tpl, f) + 1;
                match &f.params[*p].kind {
                    ValueKind::Choice(values) => {
                        let (mut next, complete) =
                            trie_next(values.iter().map(|(t, _)| t.as_slice()), &self.item);
                        if complete {
                            next.extend(self.closers(tpl, f, wrap_up));
                        }
                        Allowed::Only(next)
                    }
                    ValueKind::Free if self.span_here().is_some() => {
                        let (spans, shape) = self.span_here().expect("checked");
                        let func = self.func.expect("function chosen");
                        let key = spans.param_key(func, *p);
                        let Next {
                            mut continuations,
                            mut preferred,
                            can_end,
                            whole,
                        } = spans.next(
                            &self.item,
                            shape,
                            key,
                            spans.vocab_of(func, *p),
                            spans.not_after(func, *p),
                            spans.cased(func, *p),
                        );
                        let full = self.item.len() >= lim.max_value_tokens || wrap_up;
                        if full {
                            continuations.clear();
                            preferred.clear();
                        }
                        let first = self.item.is_empty();
                        if first && continuations.is_empty() {
                            // Nothing in the prompt to copy: write freely.
                            return Allowed::Text {
                                closers: Vec::new(),
                                banned: Vec::new(),
                            };
                        }
                        let closers = if !first && (can_end || full || continuations.is_empty()) {
                            self.closers(tpl, f, wrap_up)
                        } else {
                            Vec::new()
                        };
                        // A categorical argument's vocabulary covers what free writing is
                        // for (the user's "SF" for `San Francisco`).
                        let learned = !spans.vocab_of(func, *p).0.is_empty();
                        Allowed::Span {
                            continuations,
                            closers,
                            whole,
                            preferred,
                            free: first && !learned,
                        }
                    }
                    ValueKind::Free | ValueKind::Integer => {
                        let has_text = !tpl.decode(&self.item).trim().is_empty();
                        let full = self.item.len() >= lim.max_value_tokens || wrap_up;
                        let mut closers = if has_text || full {
                            self.closers(tpl, f, wrap_up)
                        } else {
                            Vec::new()
                        };
                        let mut banned = self.repeat_banned();
                        let func = self.func.expect("function chosen");
                        let grounding = self
                            .spans
                            .as_ref()
                            .and_then(|s| s.ungrounded(func, &self.item));
                        if let Some((ungrounded, may_end)) = grounding.filter(|_| !full) {
                            if !may_end {
                                closers.clear();
                            }
                            banned = with_grounding(tpl, banned, ungrounded, !closers.is_empty());
                        }
                        banned.sort_unstable();
                        banned.dedup();
                        if full {
                            Allowed::Only(closers)
                        } else if matches!(f.params[*p].kind, ValueKind::Integer) {
                            Allowed::Digits(closers)
                        } else {
                            Allowed::Text { closers, banned }
                        }
                    }
                }
            }
        }
    }

    /// Tokens that, after the value's last token, would form a bigram the value already has
    /// (sorted).
    fn repeat_banned(&self) -> Vec<u32> {
        let Some(&last) = self.item.last() else {
            return Vec::new();
        };
        self.item
            .windows(2)
            .filter(|w| w[0] == last)
            .map(|w| w[1])
            .collect()
    }

    /// Advances the state by one chosen token (which must be allowed).
    pub fn push(&mut self, tpl: &ChatTemplate, token: u32) {
        self.generated += 1;
        match self.phase.clone() {
            Phase::Done => {}
            Phase::Name => {
                if token == tpl.sp.arg || token == tpl.sp.end {
                    self.func = tpl
                        .functions
                        .iter()
                        .position(|f| f.name_tokens == self.item);
                    self.item.clear();
                    self.phase = if token == tpl.sp.arg {
                        Phase::Key
                    } else {
                        Phase::Done
                    };
                } else {
                    self.item.push(token);
                }
            }
            Phase::Key => {
                if token == tpl.sp.val {
                    let f = &tpl.functions[self.func.expect("function chosen")];
                    let p = f
                        .params
                        .iter()
                        .enumerate()
                        .position(|(i, p)| !self.used.contains(&i) && p.key_tokens == self.item)
                        .expect("complete key");
                    self.used.push(p);
                    self.item.clear();
                    self.phase = Phase::Value(p);
                } else {
                    self.item.push(token);
                }
            }
            Phase::Value(p) => {
                // A first token that starts no span: the model chose to write this value freely.
                if self.item.is_empty() && token != tpl.sp.arg && token != tpl.sp.end {
                    if let Some((spans, shape)) = self.span_here() {
                        let func = self.func.expect("function chosen");
                        let in_prompt = spans.runs.iter().any(|r| r.contains(&token))
                            || spans
                                .vocab_of(func, p)
                                .0
                                .iter()
                                .any(|v| v.tokens[0] == token);
                        if !(in_prompt && spans.can_start(token, shape)) {
                            self.free_value = true;
                        }
                    }
                }
                if token == tpl.sp.arg || token == tpl.sp.end {
                    self.free_value = false;
                    let f = &tpl.functions[self.func.expect("function chosen")];
                    let value = match &f.params[p].kind {
                        ValueKind::Choice(values) => values
                            .iter()
                            .find(|(t, _)| *t == self.item)
                            .map(|(_, v)| v.clone())
                            .unwrap_or(Value::Null),
                        ValueKind::Integer => tpl
                            .decode(&self.item)
                            .trim()
                            .parse::<i64>()
                            .map(Value::from)
                            .unwrap_or(Value::from(0)),
                        ValueKind::Free => Value::String(tpl.decode(&self.item).trim().to_string()),
                    };
                    self.args.insert(f.params[p].key.clone(), value);
                    self.item.clear();
                    self.phase = if token == tpl.sp.arg {
                        Phase::Key
                    } else {
                        Phase::Done
                    };
                } else {
                    self.item.push(token);
                }
            }
        }
    }

    /// The decoded call (valid once [`CallState::done`]).
    pub fn call(&self, tpl: &ChatTemplate) -> ToolCall {
        let name = self
            .func
            .map(|f| tpl.functions[f].name.clone())
            .unwrap_or_default();
        ToolCall::new(name, self.args.clone())
    }
}

fn choice_len(kind: &ValueKind) -> usize {
    match kind {
        ValueKind::Choice(v) => v.iter().map(|(t, _)| t.len()).max().unwrap_or(1),
        _ => 1,
    }
}

/// The tokens a grounded reply may not take next: the `ungrounded` ones and those that would
/// repeat a bigram (`repeated`), unless together they leave nothing to write and no closer
/// (`can_close`): a grounded reply may have to repeat itself (`06:00 … 06:00`), and the repeat
/// ban then gives way.
fn with_grounding(
    tpl: &ChatTemplate,
    repeated: Vec<u32>,
    ungrounded: Vec<u32>,
    can_close: bool,
) -> Vec<u32> {
    let mut banned = vec![false; tpl.vocab];
    for &t in repeated.iter().chain(&ungrounded) {
        banned[t as usize] = true;
    }
    let left = (0..tpl.vocab).any(|t| !tpl.is_special[t] && !banned[t]);
    if left || can_close {
        repeated.into_iter().chain(ungrounded).collect()
    } else {
        ungrounded
    }
}

/// Picks the best allowed token from log-probabilities `scores` (one row of length V).
pub fn pick(
    allowed: &Allowed,
    scores: &[f32],
    tpl: &ChatTemplate,
    digit: &[bool],
    decoding: &DecodeParams,
) -> u32 {
    let mut best = (f32::NEG_INFINITY, tpl.sp.pad);
    // The best free-text token, taken only when it beats the constrained best by the margin.
    let mut alt: Option<(f32, u32)> = None;
    visit(allowed, scores, tpl, digit, decoding, &mut |t, s, free| {
        if free {
            if alt.is_none_or(|(b, _)| s > b) {
                alt = Some((s, t));
            }
        } else if s > best.0 || best.0 == f32::NEG_INFINITY && best.1 == tpl.sp.pad {
            best = (s, t);
        }
    });
    match alt {
        Some((s, t)) if s > best.0 + decoding.free_margin => t,
        _ => best.1,
    }
}

/// Draws an allowed token with `sampler` (a served request's temperature): each candidate
/// weighs by its score with the bonuses [`pick`] adds, free text less the margin [`pick`]
/// asks of it. With nothing to draw from, [`pick`]'s token.
pub fn pick_sampled(
    allowed: &Allowed,
    scores: &[f32],
    tpl: &ChatTemplate,
    digit: &[bool],
    decoding: &DecodeParams,
    sampler: &mut Sampler,
) -> u32 {
    let mut candidates = Vec::new();
    visit(allowed, scores, tpl, digit, decoding, &mut |t, s, free| {
        candidates.push((t, if free { s - decoding.free_margin } else { s }));
    });
    sampler
        .draw(&mut candidates)
        .unwrap_or_else(|| pick(allowed, scores, tpl, digit, decoding))
}

/// Calls `f(token, score with its bonus, free)` for every token `allowed` lets come next;
/// `free` marks a span's free-text alternatives.
fn visit(
    allowed: &Allowed,
    scores: &[f32],
    tpl: &ChatTemplate,
    digit: &[bool],
    decoding: &DecodeParams,
    f: &mut dyn FnMut(u32, f32, bool),
) {
    let text = |f: &mut dyn FnMut(u32, f32, bool), free: bool, banned: &[u32]| {
        (0..scores.len())
            .filter(|&t| !tpl.is_special[t] && banned.binary_search(&(t as u32)).is_err())
            .for_each(|t| f(t as u32, scores[t], free));
    };
    match allowed {
        Allowed::Only(list) => list.iter().for_each(|&t| f(t, scores[t as usize], false)),
        Allowed::Text { closers, banned } => {
            text(f, false, banned);
            closers
                .iter()
                .for_each(|&t| f(t, scores[t as usize], false));
        }
        Allowed::Digits(extra) => {
            (0..scores.len())
                .filter(|&t| digit[t])
                .for_each(|t| f(t as u32, scores[t], false));
            extra.iter().for_each(|&t| f(t, scores[t as usize], false));
        }
        Allowed::Span {
            continuations,
            closers,
            whole,
            preferred,
            free,
        } => {
            continuations.iter().for_each(|&t| {
                let bonus = preferred
                    .iter()
                    .find(|(p, _)| *p == t)
                    .map_or(0.0, |&(_, b)| b);
                f(t, scores[t as usize] + bonus, false)
            });
            let bonus = if *whole { decoding.whole_bonus } else { 0.0 };
            closers
                .iter()
                .for_each(|&t| f(t, scores[t as usize] + bonus, false));
            if *free {
                text(f, true, &[]);
            }
        }
    }
}

/// Marks tokens that decode to digits (optionally after one leading space).
pub fn digit_tokens(tpl: &ChatTemplate) -> Vec<bool> {
    (0..tpl.vocab)
        .map(|t| {
            if tpl.is_special[t] {
                return false;
            }
            let s = tpl.decode(&[t as u32]);
            let s = s.strip_prefix(' ').unwrap_or(&s);
            !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
        })
        .collect()
}
