//! Value normalization: decides whether two argument values name the same real-world thing.
//!
//! Text is compared after case, spacing and punctuation folding; times ("6:00 PM", "18:00",
//! "6 pm", "six in the evening"), dates (ISO, "March 3rd", "the 3rd", "today", "next Friday",
//! relative to the task's reference date) and numbers ("two", "2 people") are parsed into
//! canonical values first; synonyms and subcategories come from the task file's `synonyms` (none
//! are built in: they are domain knowledge).
//!
//! Parsers return *every* plausible reading (a bare "6" may be 06:00 or 18:00; "Friday" said on
//! a Friday may be today or in a week), and two values match when their readings intersect:
//! the judge asks "could these be the same thing", not "are these spelled the same".

use std::collections::BTreeMap;

// The text layer (folding, numbers, times, dates) is `tracelab-core`'s, shared with the offline
// teacher and the student worker; the judge's paths to it stay.
pub use tracelab_core::text::date::{parse_date, Date};
pub use tracelab_core::text::number::{parse_number, UNITS};
pub use tracelab_core::text::time::{format_time, parse_time, Minutes};
pub use tracelab_core::text::{fold, words};

// ---- Booleans ------------------------------------------------------------------------------------

/// Reads a yes/no value ("True", "false", "yes", "no").
pub fn parse_bool(s: &str) -> Option<bool> {
    match fold(s).as_str() {
        "true" | "yes" | "y" => Some(true),
        "false" | "no" | "n" => Some(false),
        _ => None,
    }
}

// ---- Synonyms ------------------------------------------------------------------------------------

/// Folded synonym relation: canonical ↔ alternative (not alternative ↔ alternative: Ramen and
/// Sushi are both Japanese, but not each other).
#[derive(Debug, Clone, Default)]
pub struct Synonyms {
    groups: BTreeMap<String, Vec<String>>,
}

impl Synonyms {
    /// The relation a task file's `synonyms` give (canonical → alternatives). There are no
    /// built-in ones: which values name the same thing is domain knowledge, and lives in data.
    pub fn new(extra: &BTreeMap<String, Vec<String>>) -> Synonyms {
        let mut s = Synonyms::default();
        for (k, alts) in extra {
            s.add(k, alts.iter().map(String::as_str));
        }
        s
    }

    fn add<'a>(&mut self, canonical: &str, alts: impl Iterator<Item = &'a str>) {
        let entry = self.groups.entry(fold(canonical)).or_default();
        for a in alts {
            let a = fold(a);
            if !entry.contains(&a) {
                entry.push(a);
            }
        }
    }

    /// Whether two folded values are the same or synonyms.
    pub fn related(&self, a: &str, b: &str) -> bool {
        a == b
            || self
                .groups
                .get(a)
                .is_some_and(|alts| alts.iter().any(|x| x == b))
            || self
                .groups
                .get(b)
                .is_some_and(|alts| alts.iter().any(|x| x == a))
    }

    /// The canonical form of a folded phrase and its alternatives (for finding mentions).
    pub fn phrases_for(&self, canonical: &str) -> Vec<String> {
        let mut v = vec![canonical.to_string()];
        if let Some(alts) = self.groups.get(canonical) {
            v.extend(alts.iter().cloned());
        }
        v
    }

    /// Every group: its folded canonical value and alternatives.
    pub fn groups(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.groups.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The canonical value a folded phrase is an alternative of, if any.
    pub fn canonical_of(&self, phrase: &str) -> Option<&str> {
        self.groups
            .iter()
            .find(|(k, alts)| *k == phrase || alts.iter().any(|a| a == phrase))
            .map(|(k, _)| k.as_str())
    }
}

// ---- Comparing values ----------------------------------------------------------------------------

/// How a value was understood when two values were compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A date.
    Date,
    /// A time of day.
    Time,
    /// A number.
    Number,
    /// Yes/no.
    Bool,
    /// Free text (names, cities, categories).
    Text,
}

/// Compares argument values the way the rubric does.
#[derive(Debug, Clone)]
pub struct Normalizer {
    /// What "today" means in the conversations.
    pub today: Date,
    /// Accepted synonyms and subcategories.
    pub synonyms: Synonyms,
}

impl Normalizer {
    /// A normalizer for conversations whose "today" is `reference_date` (ISO), with the task
    /// file's `synonyms`.
    pub fn new(
        reference_date: &str,
        synonyms: &BTreeMap<String, Vec<String>>,
    ) -> Result<Normalizer, String> {
        let today = Date::parse_iso(reference_date).ok_or_else(|| {
            format!("reference_date {reference_date:?} is not a date (YYYY-MM-DD)")
        })?;
        Ok(Normalizer {
            today,
            synonyms: Synonyms::new(synonyms),
        })
    }

    /// How the argument `param` with reference value `value` should be compared: by the
    /// argument's name (`*date*`, `*time*`) or by the shape of the reference value.
    pub fn kind_of(&self, param: &str, value: &str) -> ValueKind {
        let p = param.to_lowercase();
        if p.contains("date") || Date::parse_iso(value).is_some() {
            ValueKind::Date
        } else if p.contains("time") || (value.contains(':') && !parse_time(value).is_empty()) {
            ValueKind::Time
        } else if parse_bool(value).is_some() && matches!(fold(value).as_str(), "true" | "false") {
            ValueKind::Bool
        } else if value.trim().parse::<f64>().is_ok() {
            ValueKind::Number
        } else {
            ValueKind::Text
        }
    }

    /// Whether `pred` names the same thing as `reference` for argument `param`.
    pub fn same(&self, param: &str, reference: &str, pred: &str) -> bool {
        let (fr, fp) = (fold(reference), fold(pred));
        if fr == fp {
            return true;
        }
        match self.kind_of(param, reference) {
            ValueKind::Date => intersects(
                &parse_date(reference, self.today),
                &parse_date(pred, self.today),
            ),
            ValueKind::Time => intersects(&parse_time(reference), &parse_time(pred)),
            ValueKind::Number => match (parse_number(reference), parse_number(pred)) {
                (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                _ => false,
            },
            ValueKind::Bool => parse_bool(reference) == parse_bool(pred),
            ValueKind::Text => {
                self.synonyms.related(&fr, &fp)
                    || match (parse_number(reference), parse_number(pred)) {
                        (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                        _ => false,
                    }
            }
        }
    }

    /// The canonical spelling of a value for exact comparison: ISO date, `HH:MM` time, number,
    /// `true`/`false`, or folded text. Ambiguous readings keep the folded text.
    pub fn canonical(&self, param: &str, value: &str) -> String {
        match self.kind_of(param, value) {
            ValueKind::Date => match parse_date(value, self.today).as_slice() {
                [d] => d.to_string(),
                _ => fold(value),
            },
            ValueKind::Time => match parse_time(value).as_slice() {
                [t] => format_time(*t),
                _ => fold(value),
            },
            ValueKind::Number => parse_number(value)
                .map(|n| n.to_string())
                .unwrap_or_else(|| fold(value)),
            ValueKind::Bool => parse_bool(value)
                .map(|b| b.to_string())
                .unwrap_or_else(|| fold(value)),
            ValueKind::Text => fold(value),
        }
    }
}

fn intersects<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.iter().any(|x| b.contains(x))
}

/// The text of a JSON argument value: strings as they are, other scalars in JSON spelling.
pub fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm() -> Normalizer {
        // 2019-03-01 is a Friday, as in SGD.
        Normalizer::new("2019-03-01", &BTreeMap::new()).unwrap()
    }

    /// The restaurant task file's synonyms (the data that holds them).
    fn restaurants() -> Normalizer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks/restaurants.md");
        let task = crate::task::Task::load(&path).unwrap();
        Normalizer::new("2019-03-01", &task.settings.synonyms).unwrap()
    }

    #[test]
    fn same_value_table() {
        let n = restaurants();
        let cases: &[(&str, &str, &str, bool)] = &[
            ("time", "18:00", "6:00 PM", true),
            ("time", "18:00", "six in the evening", true),
            ("time", "18:00", "6 pm", true),
            ("time", "18:00", "7 pm", false),
            ("time", "11:30", "11:30 pm", false),
            ("date", "2019-03-01", "today", true),
            ("date", "2019-03-03", "March 3rd", true),
            ("date", "2019-03-03", "the 3rd", true),
            ("date", "2019-03-08", "next Friday", true),
            ("date", "2019-03-02", "today", false),
            ("party_size", "2", "two", true),
            ("party_size", "2", "2 people", true),
            ("party_size", "2", "3", false),
            ("cuisine", "American", "Barbecue", true),
            ("cuisine", "Barbecue", "american", true),
            ("cuisine", "Asian", "Asian Fusion", true),
            ("cuisine", "Gastrobar", "gastropub", true),
            ("cuisine", "Japanese", "Ramen", true),
            ("cuisine", "Chinese", "Szechuan", true),
            ("cuisine", "Vietnamese", "Cambodian", true),
            ("cuisine", "Ramen", "Sushi", false),
            ("cuisine", "Italian", "Mexican", false),
            ("city", "San Francisco", "SF", true),
            ("city", "San Jose", "san jose", true),
            ("city", "San Jose", "San Francisco", false),
            ("serves_alcohol", "True", "true", true),
            ("serves_alcohol", "True", "yes", true),
            ("serves_alcohol", "True", "False", false),
            ("restaurant_name", "Mcdonald's", "McDonalds", true),
        ];
        for (p, r, v, want) in cases {
            assert_eq!(n.same(p, r, v), *want, "{p}: {r} vs {v}");
        }
    }

    #[test]
    fn task_synonyms_extend_the_table() {
        let mut extra = BTreeMap::new();
        extra.insert("Seafood".to_string(), vec!["Fish".to_string()]);
        let n = Normalizer::new("2019-03-01", &extra).unwrap();
        assert!(n.same("cuisine", "Seafood", "fish"));
        assert!(!norm().same("cuisine", "Seafood", "fish"));
        assert!(
            !n.same("cuisine", "American", "BBQ"),
            "no built-in synonyms"
        );
        assert!(restaurants().same("cuisine", "American", "BBQ"));
        assert!(Normalizer::new("March", &extra).is_err());
    }

    #[test]
    fn canonical_forms() {
        let n = norm();
        assert_eq!(n.canonical("time", "6:00 PM"), "18:00");
        assert_eq!(n.canonical("date", "tomorrow"), "2019-03-02");
        assert_eq!(n.canonical("party_size", "2"), "2");
        assert_eq!(n.canonical("serves_alcohol", "True"), "true");
        assert_eq!(n.canonical("city", "San  Jose!"), "san jose");
    }
}
