//! Value normalization: decides whether two argument values name the same real-world thing.
//!
//! Text is compared after case, spacing and punctuation folding; times ("6:00 PM", "18:00",
//! "6 pm", "six in the evening"), dates (ISO, "March 3rd", "the 3rd", "today", "next Friday",
//! relative to the task's reference date) and numbers ("two", "2 people") are parsed into
//! canonical values first; synonyms and subcategories come from a table (built-in defaults for
//! the study's cuisine pairs, extended by the task file's `synonyms`).
//!
//! Parsers return *every* plausible reading (a bare "6" may be 06:00 or 18:00; "Friday" said on
//! a Friday may be today or in a week), and two values match when their readings intersect:
//! the judge asks "could these be the same thing", not "are these spelled the same".

use std::collections::BTreeMap;

/// Folds case, spacing and punctuation: lowercase, `&` → `and`, apostrophes dropped
/// (`McDonald's` → `mcdonalds`), other punctuation → space, whitespace collapsed.
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\'' | '’' | '`' => {}
            '&' => out.push_str(" and "),
            c if c.is_alphanumeric() => out.extend(c.to_lowercase()),
            _ => out.push(' '),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The folded words of `s`.
pub fn words(s: &str) -> Vec<String> {
    fold(s)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

// ---- Numbers -------------------------------------------------------------------------------------

/// Number words from zero to nineteen, indexed by their value.
pub const UNITS: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 8] = [
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

/// Words that may surround a count without changing it ("a table for 2 people").
const COUNT_FILLER: &[&str] = &[
    "people", "persons", "person", "guests", "guest", "adults", "adult", "pax", "of", "for", "a",
    "party", "table", "seats", "seat", "us", "diners", "tickets", "ticket", "rooms", "room",
    "nights", "night",
];

/// Parses a run of number words ("twenty one", "forty-five", "a hundred") into its value.
fn number_words(ws: &[&str]) -> Option<u32> {
    if ws.is_empty() {
        return None;
    }
    let mut total = 0u32;
    let mut current = 0u32;
    let mut seen = false;
    for w in ws {
        if let Some(u) = UNITS.iter().position(|x| x == w) {
            current += u as u32;
        } else if let Some(t) = TENS.iter().position(|x| x == w) {
            current += 20 + 10 * t as u32;
        } else if *w == "hundred" {
            current = current.max(1) * 100;
        } else if *w == "thousand" {
            total += current.max(1) * 1000;
            current = 0;
        } else if *w == "and" && seen {
            continue;
        } else {
            return None;
        }
        seen = true;
    }
    Some(total + current)
}

/// Parses a number written in digits or words, optionally with count words around it
/// ("2", "two", "2 people", "party of four", "3.5"). `None` when anything else is present.
pub fn parse_number(s: &str) -> Option<f64> {
    let folded = fold(&s.replace('-', " "));
    // Keep a decimal point between digits ("3.5"), which `fold` turned into a space.
    let trimmed = s.trim();
    if let Ok(v) = trimmed.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    let ws: Vec<&str> = folded
        .split(' ')
        .filter(|w| !w.is_empty() && !COUNT_FILLER.contains(w))
        .collect();
    match ws.as_slice() {
        [] => None,
        [d] if d.chars().all(|c| c.is_ascii_digit()) => d.parse::<f64>().ok(),
        _ => number_words(&ws).map(f64::from),
    }
}

/// Reads one number token (digits or a single number word).
fn token_number(w: &str) -> Option<u32> {
    if !w.is_empty() && w.len() <= 4 && w.chars().all(|c| c.is_ascii_digit()) {
        return w.parse().ok();
    }
    number_words(&[w])
}

// ---- Times ---------------------------------------------------------------------------------------

/// Minutes after midnight.
pub type Minutes = u16;

#[derive(Clone, Copy, PartialEq)]
enum Meridiem {
    Am,
    Pm,
}

/// Every plausible reading of a time of day, in minutes after midnight; empty when `s` is not
/// a time. "18:00", "6:00 PM", "6pm", "six in the evening", "half past six", "noon" all parse;
/// a bare "6" gives both 06:00 and 18:00.
pub fn parse_time(s: &str) -> Vec<Minutes> {
    let lower = s.to_lowercase().replace("a.m.", "am").replace("p.m.", "pm");
    // Split "6pm" / "6:30pm" into number and meridiem, and "18:30" / "18.30" into hour and minute.
    let mut tokens: Vec<String> = Vec::new();
    let mut clock_minutes: Option<u32> = None;
    let mut two_digit_hour = false;
    for raw in lower.split(|c: char| c.is_whitespace() || c == ',' || c == '-') {
        if raw.is_empty() {
            continue;
        }
        let split_at = raw
            .find(|c: char| c.is_ascii_alphabetic())
            .filter(|&i| i > 0 && raw[..i].chars().all(|c| c.is_ascii_digit() || c == ':'));
        let (num, rest) = match split_at {
            Some(i) => (&raw[..i], &raw[i..]),
            None => (raw, ""),
        };
        if let Some((h, m)) = num.split_once(':').or_else(|| {
            num.split_once('.')
                .filter(|(h, m)| !h.is_empty() && m.len() == 2)
        }) {
            let m = m.split(':').next().unwrap_or(m); // drop seconds
            let (Ok(hv), Ok(mv)) = (h.parse::<u32>(), m.parse::<u32>()) else {
                return Vec::new();
            };
            if mv >= 60 || clock_minutes.is_some() {
                return Vec::new();
            }
            // A two-digit hour ("06:30", "11:30") is a 24-hour clock reading: no am/pm guess.
            two_digit_hour = h.len() == 2;
            tokens.push(hv.to_string());
            clock_minutes = Some(mv);
        } else {
            let w = fold(num);
            if !w.is_empty() {
                tokens.push(w);
            }
        }
        if !rest.is_empty() {
            tokens.push(fold(rest));
        }
    }
    let mut meridiem = None;
    let mut special: Option<u32> = None;
    let mut rel: Option<(&str, u32)> = None; // ("past" | "to", minutes)
    let mut nums: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "am" | "morning" => meridiem = Some(Meridiem::Am),
            "pm" | "evening" | "night" | "afternoon" | "tonight" => meridiem = Some(Meridiem::Pm),
            "noon" | "midday" | "lunchtime" => special = Some(12 * 60),
            "midnight" => special = Some(0),
            "at" | "around" | "about" | "in" | "the" | "oclock" | "o" | "clock" | "sharp"
            | "approximately" | "roughly" | "of" | "this" | "by" | "for" => {}
            "half" | "quarter" if tokens.get(i + 1).is_some_and(|n| n == "past" || n == "to") => {
                let mins = if t == "half" { 30 } else { 15 };
                rel = Some((
                    if tokens[i + 1] == "past" {
                        "past"
                    } else {
                        "to"
                    },
                    mins,
                ));
                i += 1;
            }
            _ => nums.push(t),
        }
        i += 1;
    }
    if let Some(m) = special {
        return if nums.is_empty() && rel.is_none() {
            vec![m as Minutes]
        } else {
            Vec::new()
        };
    }
    let (hour, mut minute) = match (nums.as_slice(), clock_minutes) {
        ([h], Some(m)) => (token_number(h), m),
        ([h], None) => (token_number(h), 0),
        ([h, rest @ ..], None) if !rest.is_empty() => {
            // "six thirty", "seven forty five", "6 30"
            let m = if rest.len() == 1 {
                token_number(rest[0])
            } else {
                number_words(rest)
            };
            match m {
                Some(m) if m < 60 => (token_number(h), m),
                _ => return Vec::new(),
            }
        }
        _ => return Vec::new(),
    };
    let Some(mut hour) = hour else {
        return Vec::new();
    };
    if let Some((dir, m)) = rel {
        if clock_minutes.is_some() || minute != 0 {
            return Vec::new();
        }
        if dir == "past" {
            minute = m;
        } else {
            hour = if hour == 0 { 23 } else { hour - 1 };
            minute = 60 - m;
            if hour == 0 && meridiem.is_some() {
                hour = 12;
            }
        }
    }
    if hour > 24 || minute >= 60 {
        return Vec::new();
    }
    let at = |h: u32| ((h % 24) * 60 + minute) as Minutes;
    match meridiem {
        Some(_) if hour > 12 => vec![at(hour)],
        Some(Meridiem::Am) => vec![at(hour % 12)],
        Some(Meridiem::Pm) => vec![at(hour % 12 + 12)],
        None if hour == 0 || hour >= 12 || two_digit_hour => vec![at(hour)],
        None => vec![at(hour), at(hour + 12)],
    }
}

/// `HH:MM` for minutes after midnight.
pub fn format_time(m: Minutes) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

// ---- Dates ---------------------------------------------------------------------------------------

pub use crate::dates::Date;
use crate::dates::{MONTHS, WEEKDAYS};

fn month_of(w: &str) -> Option<u32> {
    if w.len() < 3 {
        return None;
    }
    let w = if w == "sept" { "sep" } else { w };
    MONTHS
        .iter()
        .position(|m| *m == w || (w.len() == 3 && m.starts_with(w)))
        .map(|i| i as u32 + 1)
}

fn weekday_of(w: &str) -> Option<u32> {
    let abbrev = [
        ("mon", 0),
        ("tue", 1),
        ("tues", 1),
        ("wed", 2),
        ("thu", 3),
        ("thur", 3),
        ("thurs", 3),
        ("fri", 4),
        ("sat", 5),
        ("sun", 6),
    ];
    WEEKDAYS
        .iter()
        .position(|d| *d == w)
        .map(|i| i as u32)
        .or_else(|| abbrev.iter().find(|(a, _)| *a == w).map(|(_, i)| *i))
}

/// A day-of-month token: "3", "3rd", "21st", "third", "twenty first".
fn ordinal_day(ws: &[&str]) -> Option<u32> {
    const ORD: [&str; 20] = [
        "",
        "first",
        "second",
        "third",
        "fourth",
        "fifth",
        "sixth",
        "seventh",
        "eighth",
        "ninth",
        "tenth",
        "eleventh",
        "twelfth",
        "thirteenth",
        "fourteenth",
        "fifteenth",
        "sixteenth",
        "seventeenth",
        "eighteenth",
        "nineteenth",
    ];
    let day = match ws {
        [w] => {
            let digits = w.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let suffix = &w[digits.len()..];
            if !digits.is_empty()
                && digits.len() <= 2
                && digits.chars().all(|c| c.is_ascii_digit())
                && matches!(suffix, "" | "st" | "nd" | "rd" | "th")
            {
                digits.parse().ok()
            } else if let Some(i) = ORD.iter().position(|o| !o.is_empty() && o == w) {
                Some(i as u32)
            } else if *w == "twentieth" {
                Some(20)
            } else if *w == "thirtieth" {
                Some(30)
            } else {
                None
            }
        }
        [tens, unit] => {
            let base = match *tens {
                "twenty" => 20,
                "thirty" => 30,
                _ => return None,
            };
            ORD.iter()
                .position(|o| !o.is_empty() && o == unit)
                .filter(|&u| u < 10)
                .map(|u| base + u as u32)
        }
        _ => None,
    }?;
    (1..=31).contains(&day).then_some(day)
}

/// Every plausible reading of a date relative to `today`; empty when `s` is not a date.
/// Accepts ISO dates, US numeric dates ("3/3", "03/03/2019"), "today", "tonight", "tomorrow",
/// "the day after tomorrow", weekdays with or without "this"/"next"/"coming", and month–day
/// forms ("March 3rd", "3rd of March", "Mar 3, 2019", "the 3rd").
pub fn parse_date(s: &str, today: Date) -> Vec<Date> {
    if let Some(d) = Date::parse_iso(s) {
        return vec![d];
    }
    // US numeric forms before folding turns the slashes into spaces.
    let t = s.trim();
    if t.contains('/') && t.chars().all(|c| c.is_ascii_digit() || c == '/') {
        let parts: Vec<&str> = t.split('/').collect();
        let parsed: Option<Vec<u32>> = parts.iter().map(|p| p.parse().ok()).collect();
        return match parsed.as_deref() {
            Some([m, d]) => upcoming_month_day(*m, *d, today),
            Some([m, d, y]) => {
                let y = if *y < 100 {
                    2000 + *y as i32
                } else {
                    *y as i32
                };
                Date::new(y, *m, *d).into_iter().collect()
            }
            _ => Vec::new(),
        };
    }
    let folded = fold(s);
    let ws: Vec<&str> = folded
        .split(' ')
        .filter(|w| {
            !w.is_empty()
                && !matches!(
                    *w,
                    "on" | "the" | "of" | "for" | "at" | "day" | "date" | "in" | "it" | "is"
                )
        })
        .collect();
    match ws.as_slice() {
        [] => Vec::new(),
        ["today"]
        | ["tonight"]
        | ["this", "evening"]
        | ["this", "afternoon"]
        | ["this", "morning"]
        | ["now"] => vec![today],
        ["tomorrow"] | ["tomorrow", "night" | "evening" | "morning" | "afternoon"] => {
            vec![today.plus(1)]
        }
        ["after", "tomorrow"] | ["overmorrow"] => vec![today.plus(2)],
        [w] if weekday_of(w).is_some() => weekday_dates(weekday_of(w).unwrap_or(0), false, today),
        ["this" | "coming" | "upcoming", w] if weekday_of(w).is_some() => {
            weekday_dates(weekday_of(w).unwrap_or(0), false, today)
        }
        ["next", w] if weekday_of(w).is_some() => {
            weekday_dates(weekday_of(w).unwrap_or(0), true, today)
        }
        _ => month_day_forms(&ws, today),
    }
}

/// A weekday `wd` from `today`: the first on or after today (and the one after, when today is
/// that weekday); with `next`, the first strictly after today and the one a week later.
fn weekday_dates(wd: u32, next: bool, today: Date) -> Vec<Date> {
    let ahead = (i64::from(wd) - i64::from(today.weekday())).rem_euclid(7);
    let first = if ahead == 0 && next { 7 } else { ahead };
    let mut v = vec![today.plus(first)];
    if next || ahead == 0 {
        v.push(today.plus(first + 7));
    }
    v
}

/// The first date on or after `today` with this month and day (this year or next).
fn upcoming_month_day(m: u32, d: u32, today: Date) -> Vec<Date> {
    match Date::new(today.year, m, d) {
        Some(x) if x >= today => vec![x],
        Some(x) => vec![x, Date::new(today.year + 1, m, d).unwrap_or(x)],
        None => Vec::new(),
    }
}

fn month_day_forms(ws: &[&str], today: Date) -> Vec<Date> {
    // Drop a leading weekday ("Friday, March 8th").
    let ws = match ws {
        [w, rest @ ..] if weekday_of(w).is_some() && !rest.is_empty() => rest,
        _ => ws,
    };
    let year = ws
        .last()
        .filter(|w| w.len() == 4 && w.chars().all(|c| c.is_ascii_digit()))
        .and_then(|w| w.parse::<i32>().ok());
    let ws = if year.is_some() {
        &ws[..ws.len() - 1]
    } else {
        ws
    };
    let (month, day) = match ws {
        [m, d @ ..] if month_of(m).is_some() && !d.is_empty() => (month_of(m), ordinal_day(d)),
        [d @ .., m] if month_of(m).is_some() && !d.is_empty() => (month_of(m), ordinal_day(d)),
        d => (None, ordinal_day(d)),
    };
    let Some(day) = day else {
        return Vec::new();
    };
    match (month, year) {
        (Some(m), Some(y)) => Date::new(y, m, day).into_iter().collect(),
        (Some(m), None) => upcoming_month_day(m, day, today),
        (None, None) => {
            // "the 3rd": this month if not past, else next month.
            match Date::new(today.year, today.month, day) {
                Some(x) if x >= today => vec![x],
                _ => {
                    let (y, m) = if today.month == 12 {
                        (today.year + 1, 1)
                    } else {
                        (today.year, today.month + 1)
                    };
                    Date::new(y, m, day).into_iter().collect()
                }
            }
        }
        (None, Some(_)) => Vec::new(),
    }
}

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

/// Built-in synonyms and subcategories: the study's cuisine pairs, common city abbreviations,
/// and the wording of facts a reply may claim (alcohol, live music, price ranges). Canonical
/// value → accepted alternatives; a task file's `synonyms` extends these.
pub const DEFAULT_SYNONYMS: &[(&str, &[&str])] = &[
    ("American", &["Barbecue", "BBQ", "Burgers", "Diner"]),
    ("Asian", &["Asian Fusion", "Pan-Asian"]),
    ("Gastrobar", &["Gastropub"]),
    ("Japanese", &["Ramen", "Sushi"]),
    ("Chinese", &["Szechuan", "Sichuan", "Dim Sum", "Cantonese"]),
    ("Vietnamese", &["Cambodian", "Pho"]),
    ("San Francisco", &["SF", "San Fran"]),
    ("New York", &["NYC", "New York City"]),
    ("Los Angeles", &["LA"]),
    (
        "alcohol",
        &["drinks", "wine", "beer", "liquor", "cocktails", "alcoholic"],
    ),
    (
        "live music",
        &["live band", "live bands", "live performances", "music"],
    ),
    (
        "inexpensive",
        &["cheap", "budget", "low cost", "low priced"],
    ),
    (
        "moderate",
        &[
            "moderately priced",
            "mid range",
            "reasonably priced",
            "reasonable",
            "average priced",
        ],
    ),
    (
        "expensive",
        &["pricey", "high end", "upscale", "costly", "pricy"],
    ),
    ("very expensive", &["luxury", "extremely expensive"]),
];

/// Folded synonym relation: canonical ↔ alternative (not alternative ↔ alternative: Ramen and
/// Sushi are both Japanese, but not each other).
#[derive(Debug, Clone, Default)]
pub struct Synonyms {
    groups: BTreeMap<String, Vec<String>>,
}

impl Synonyms {
    /// The built-in table extended by `extra` (canonical → alternatives).
    pub fn with_defaults(extra: &BTreeMap<String, Vec<String>>) -> Synonyms {
        let mut s = Synonyms::default();
        for (k, alts) in DEFAULT_SYNONYMS {
            s.add(k, alts.iter().copied());
        }
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
    /// A normalizer for conversations whose "today" is `reference_date` (ISO), with the built-in
    /// synonyms extended by `synonyms`.
    pub fn new(
        reference_date: &str,
        synonyms: &BTreeMap<String, Vec<String>>,
    ) -> Result<Normalizer, String> {
        let today = Date::parse_iso(reference_date).ok_or_else(|| {
            format!("reference_date {reference_date:?} is not a date (YYYY-MM-DD)")
        })?;
        Ok(Normalizer {
            today,
            synonyms: Synonyms::with_defaults(synonyms),
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

    #[test]
    fn folding() {
        for (a, b) in [
            ("McDonald's", "mcdonalds"),
            ("  Chili's Grill & Bar ", "chilis grill and bar"),
            ("San-Jose", "san jose"),
            ("P.F. Chang's", "p f changs"),
        ] {
            assert_eq!(fold(a), b, "{a}");
        }
    }

    #[test]
    fn times() {
        let t = |h: u16, m: u16| h * 60 + m;
        let cases: &[(&str, &[Minutes])] = &[
            ("18:00", &[t(18, 0)]),
            ("6:00 PM", &[t(18, 0)]),
            ("6 pm", &[t(18, 0)]),
            ("6pm", &[t(18, 0)]),
            ("6 p.m.", &[t(18, 0)]),
            ("six in the evening", &[t(18, 0)]),
            ("six thirty pm", &[t(18, 30)]),
            ("half past six in the evening", &[t(18, 30)]),
            ("quarter to seven pm", &[t(18, 45)]),
            ("7:45 am", &[t(7, 45)]),
            ("11:30 in the morning", &[t(11, 30)]),
            ("noon", &[t(12, 0)]),
            ("12 pm", &[t(12, 0)]),
            ("12 am", &[t(0, 0)]),
            ("6", &[t(6, 0), t(18, 0)]),
            ("6:30", &[t(6, 30), t(18, 30)]),
            ("11:30", &[t(11, 30)]),
            ("06:30", &[t(6, 30)]),
            ("18:30:00", &[t(18, 30)]),
            ("at 7 o'clock", &[t(7, 0), t(19, 0)]),
            ("seven forty five in the evening", &[t(19, 45)]),
            ("San Jose", &[]),
            ("25:00", &[]),
            ("6:75", &[]),
        ];
        for (s, want) in cases {
            assert_eq!(parse_time(s), *want, "{s}");
        }
    }

    #[test]
    fn dates_relative_to_the_reference_date() {
        let today = Date::parse_iso("2019-03-01").unwrap();
        assert_eq!(today.weekday(), 4, "2019-03-01 is a Friday");
        let d = |s: &str| Date::parse_iso(s).unwrap();
        let cases: &[(&str, &[&str])] = &[
            ("2019-03-03", &["2019-03-03"]),
            ("today", &["2019-03-01"]),
            ("tonight", &["2019-03-01"]),
            ("tomorrow", &["2019-03-02"]),
            ("the day after tomorrow", &["2019-03-03"]),
            ("March 3rd", &["2019-03-03"]),
            ("march 3", &["2019-03-03"]),
            ("3rd of March", &["2019-03-03"]),
            ("Mar 3, 2019", &["2019-03-03"]),
            ("the 3rd", &["2019-03-03"]),
            ("on the third", &["2019-03-03"]),
            ("the twenty first", &["2019-03-21"]),
            ("3/3", &["2019-03-03"]),
            ("03/03/2019", &["2019-03-03"]),
            ("next Friday", &["2019-03-08", "2019-03-15"]),
            ("Friday", &["2019-03-01", "2019-03-08"]),
            ("this Sunday", &["2019-03-03"]),
            ("next Thursday", &["2019-03-07", "2019-03-14"]),
            ("Thursday, March 7th", &["2019-03-07"]),
            ("February 2nd", &["2019-02-02", "2020-02-02"]),
            ("San Jose", &[]),
            ("the 45th", &[]),
        ];
        for (s, want) in cases {
            let want: Vec<Date> = want.iter().map(|w| d(w)).collect();
            assert_eq!(parse_date(s, today), want, "{s}");
        }
        assert_eq!(Date::from_days(d("2020-02-29").days()), d("2020-02-29"));
        assert_eq!(d("2019-12-31").plus(1), d("2020-01-01"));
    }

    #[test]
    fn numbers() {
        let cases: &[(&str, Option<f64>)] = &[
            ("2", Some(2.0)),
            ("two", Some(2.0)),
            ("2 people", Some(2.0)),
            ("party of four", Some(4.0)),
            ("twenty-one", Some(21.0)),
            ("one hundred and five", Some(105.0)),
            ("3.5", Some(3.5)),
            ("71 Saint Peter", None),
            ("many", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_number(s), *want, "{s}");
        }
    }

    #[test]
    fn same_value_table() {
        let n = norm();
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
        assert!(n.same("cuisine", "American", "BBQ"), "defaults stay");
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
