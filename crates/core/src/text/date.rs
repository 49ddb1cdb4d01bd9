//! Dates in free text: [`parse_date`] reads a whole value into every plausible reading relative
//! to the task's "today" ("next Friday" may mean either of two Fridays); [`find_dates`] finds the
//! dates a message states (ISO, "March 3rd", "the 3rd", "today", "tomorrow", "next Friday"),
//! each with the one reading a speaker most likely means.

use std::ops::Range;
use std::sync::LazyLock;

use regex::{Captures, Regex};

use super::fold;
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

/// The date of a value written exactly as an ISO date (`YYYY-MM-DD`, the form tool calls
/// carry); `None` for anything else, other spellings included.
pub fn parse_iso_value(value: &str) -> Option<Date> {
    let shaped = value.len() == 10
        && value.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    shaped.then(|| Date::parse_iso(value)).flatten()
}

/// "today", "tonight", "tomorrow", "day after tomorrow".
static RELATIVE_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(day after tomorrow|tomorrow|today|tonight)\b").expect("valid regex")
});
/// An ISO date.
static ISO_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d{4}-\d{2}-\d{2}\b").expect("valid regex"));
/// "March 3", "march 3rd".
static MONTH_DAY_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\b({})\s+(\d{{1,2}})(?:st|nd|rd|th)?\b",
        MONTHS.join("|")
    ))
    .expect("valid regex")
});
/// "the 3rd", "3rd of March", "the 12th of this month".
static DAY_OF_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\b(?:the\s+)?(\d{{1,2}})(?:st|nd|rd|th)(?:\s+of\s+(?:({})|this month))?\b",
        MONTHS.join("|")
    ))
    .expect("valid regex")
});
/// "next Friday", "this Sunday", "on Monday", "coming Tuesday".
static WEEKDAY_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\b(?:(?:next|this|on|coming)\s+)({})\b",
        WEEKDAYS.join("|")
    ))
    .expect("valid regex")
});

/// The date of `day` in `month` of `year`; a day past the month's end rolls over into the next
/// ("February 30" is March 2nd), as a speaker's slip most likely means.
fn rolled(year: i32, month: u32, day: u32) -> Date {
    Date::from_days(Date { year, month, day }.days())
}

/// The 1-based month a name (any case) stands for.
fn month_number(name: &str) -> u32 {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(name))
        .map_or(1, |i| i as u32 + 1)
}

/// A day of month captured as digits, when it is one (1–31).
fn day_number(c: &Captures, group: usize) -> Option<u32> {
    c[group].parse().ok().filter(|d| (1..=31).contains(d))
}

/// The dates `text` states, in order, as byte ranges and their one reading against `today`:
/// ISO dates; "today"/"tonight", "tomorrow", "day after tomorrow"; a month and a day ("March
/// 3rd", in `today`'s year); an ordinal day ("the 3rd", "3rd of March", "the 12th of this
/// month"; `today`'s month unless one is named), except in a street address ("1434 1st
/// Street"); a weekday after "next", "this", "on" or "coming" (the first such day after
/// today). Where two forms overlap, the earlier-listed form wins.
pub fn find_dates(text: &str, today: Date) -> Vec<(Range<usize>, Date)> {
    let mut out: Vec<(Range<usize>, Date)> = Vec::new();
    let mut add = |range: Range<usize>, date: Date| {
        if !out
            .iter()
            .any(|(r, _)| r.start < range.end && range.start < r.end)
        {
            out.push((range, date));
        }
    };
    for m in ISO_RE.find_iter(text) {
        if let Some(d) = Date::parse_iso(m.as_str()) {
            add(m.range(), d);
        }
    }
    for c in RELATIVE_RE.captures_iter(text) {
        let ahead = match c[1].to_ascii_lowercase().as_str() {
            "tomorrow" => 1,
            "day after tomorrow" => 2,
            _ => 0,
        };
        add(c.get(0).expect("match").range(), today.plus(ahead));
    }
    for c in MONTH_DAY_RE.captures_iter(text) {
        if let Some(day) = day_number(&c, 2) {
            let date = rolled(today.year, month_number(&c[1]), day);
            add(c.get(0).expect("match").range(), date);
        }
    }
    for c in DAY_OF_RE.captures_iter(text) {
        let whole = c.get(0).expect("match");
        // "1434 1st Street", "3rd Avenue": an ordinal in an address is not a date.
        if in_address(&text[..whole.start()], &text[whole.end()..]) {
            continue;
        }
        if let Some(day) = day_number(&c, 1) {
            let month = c.get(2).map_or(today.month, |m| month_number(m.as_str()));
            add(whole.range(), rolled(today.year, month, day));
        }
    }
    for c in WEEKDAY_RE.captures_iter(text) {
        let wd = WEEKDAYS
            .iter()
            .position(|w| w.eq_ignore_ascii_case(&c[1]))
            .unwrap_or(0) as i64;
        let ahead = (wd - i64::from(today.weekday())).rem_euclid(7);
        let date = today.plus(if ahead == 0 { 7 } else { ahead });
        add(c.get(0).expect("match").range(), date);
    }
    out.sort_by_key(|(r, _)| r.start);
    out
}

/// Words that follow an ordinal in a street address.
const ADDRESS_WORDS: &[&str] = &[
    "street",
    "st",
    "avenue",
    "ave",
    "road",
    "rd",
    "boulevard",
    "blvd",
    "floor",
    "fl",
    "place",
    "pl",
    "drive",
    "dr",
    "way",
    "lane",
    "ln",
    "court",
    "ct",
    "terrace",
    "ter",
];

/// Whether an ordinal between `before` and `after` is part of an address: a house number right
/// before it, or a street word right after it.
fn in_address(before: &str, after: &str) -> bool {
    let next = after
        .trim_start()
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let prev_is_number = before
        .trim_end()
        .rsplit(char::is_whitespace)
        .next()
        .is_some_and(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_digit()));
    prev_is_number || ADDRESS_WORDS.contains(&next.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// `find_dates` on `text` against 2019-03-01 (a Friday), as (said, ISO) pairs.
    fn found(text: &str) -> Vec<(&str, String)> {
        let today = Date::parse_iso("2019-03-01").unwrap();
        find_dates(text, today)
            .into_iter()
            .map(|(r, d)| (&text[r], d.to_string()))
            .collect()
    }

    #[test]
    fn iso_values() {
        assert_eq!(parse_iso_value("2019-03-08"), Date::new(2019, 3, 8));
        for no in [
            "2019-3-8",
            "2019/03/08",
            "2019-02-30",
            "+019-03-08",
            "March 8th",
        ] {
            assert_eq!(parse_iso_value(no), None, "{no}");
        }
    }

    #[test]
    fn finds_dates_a_message_states() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("on 2019-03-12 please", &[("2019-03-12", "2019-03-12")]),
            ("March 3rd", &[("March 3rd", "2019-03-03")]),
            ("the 3rd works", &[("the 3rd", "2019-03-03")]),
            (
                "today or tomorrow",
                &[("today", "2019-03-01"), ("tomorrow", "2019-03-02")],
            ),
            (
                "the day after tomorrow",
                &[("day after tomorrow", "2019-03-03")],
            ),
            ("next Friday", &[("next Friday", "2019-03-08")]),
            ("this Sunday", &[("this Sunday", "2019-03-03")]),
            (
                "the 14th of March at 5",
                &[("the 14th of March", "2019-03-14")],
            ),
            (
                "check in on March 5th, check out the 8th",
                &[("March 5th", "2019-03-05"), ("the 8th", "2019-03-08")],
            ),
        ];
        for (text, want) in cases {
            let want: Vec<(&str, String)> = want.iter().map(|(s, d)| (*s, d.to_string())).collect();
            assert_eq!(found(text), want, "{text}");
        }
        for none in [
            "1434 1st Street",
            "on 3rd Avenue",
            "3 nights",
            "San Jose",
            "the 45th",
        ] {
            assert_eq!(found(none), vec![], "{none}");
        }
    }
}
