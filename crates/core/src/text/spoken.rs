//! Spoken forms of canonical argument values: how people say the `19:30`, `2019-03-08` and `4`
//! that tool calls carry ("7:30 pm", "next Friday", "four").
//!
//! The offline teacher uses them both ways. Reading traces, a phrasing that says "a table for
//! four at 7 pm tomorrow" while the call has `party_size = 4, time = 19:00, date = 2019-03-02`
//! delexicalizes into a template with three placeholders instead of being thrown away for
//! keeping value words (without this, nearly every real confirmation and booking request was
//! lost and the simulator fell back to slot dumps such as "time: 19:00"). Writing conversations,
//! values are said in such forms again, so the student learns from messages that look like real
//! users' and assistants', while calls and results keep the canonical values.
//!
//! Relative dates mean what the student's and the judge's normalizers read them as: "today",
//! "tomorrow", "the day after tomorrow" against the task's reference date; "next/this Friday"
//! is the first Friday strictly after it.

use rand::seq::IndexedRandom;
use rand::Rng;

use super::date::parse_iso_value;
use super::number::UNITS;
use super::time::parse_clock;
use crate::dates::{Date, MONTHS, WEEKDAYS};

/// Counts up to this are said in words too ("four"); larger ones only in digits.
const MAX_WORDED: usize = 12;

/// What a canonical value is, by its shape.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// `H:MM` or `HH:MM` on a 24-hour clock.
    Time { hour: u32, minute: u32 },
    /// An ISO date, as days since 1970-01-01.
    Date(i64),
    /// A small count (party size, number of tickets).
    Count(usize),
}

fn shape(value: &str) -> Option<Shape> {
    if value.contains(':') {
        return parse_clock(value).map(|(hour, minute)| Shape::Time { hour, minute });
    }
    if let Some(d) = parse_iso_value(value) {
        return Some(Shape::Date(d.days()));
    }
    match value.parse::<usize>() {
        Ok(n) if (2..=MAX_WORDED).contains(&n) && !value.starts_with('0') => Some(Shape::Count(n)),
        _ => None,
    }
}

/// Days since 1970-01-01 of an ISO date (`YYYY-MM-DD`).
pub fn parse_date(s: &str) -> Option<i64> {
    Date::parse_iso(s).map(Date::days)
}

/// The ISO date of a day count since 1970-01-01.
pub fn format_date(z: i64) -> String {
    Date::from_days(z).to_string()
}

/// `(month name, day of month)` of a day count, the name capitalized ("March").
fn month_day(z: i64) -> (String, i64) {
    let d = Date::from_days(z);
    (capitalized(MONTHS[d.month as usize - 1]), i64::from(d.day))
}

fn capitalized(w: &str) -> String {
    let mut c = w.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The weekday name of a day count ("Friday").
fn weekday_name(z: i64) -> String {
    capitalized(WEEKDAYS[Date::from_days(z).weekday() as usize])
}

/// Whether two day counts fall in the same month.
fn same_month(a: i64, b: i64) -> bool {
    let (a, b) = (Date::from_days(a), Date::from_days(b));
    (a.year, a.month) == (b.year, b.month)
}

fn ordinal(d: i64) -> String {
    let suffix = match (d % 10, d % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{d}{suffix}")
}

/// Spoken forms relative to one reference date.
#[derive(Debug, Clone)]
pub struct Spoken {
    /// The task's "today", as days since 1970-01-01 (`None`: dates are only said absolutely).
    today: Option<i64>,
}

impl Spoken {
    /// Spoken forms against `reference_date` (`YYYY-MM-DD`; anything else disables relative
    /// dates).
    pub fn new(reference_date: &str) -> Spoken {
        Spoken {
            today: parse_date(reference_date),
        }
    }

    /// Every form read as saying `value`, the value itself first. Matching is meant to be
    /// case-insensitive; forms are in their usual capitalization.
    pub fn forms(&self, value: &str) -> Vec<String> {
        let mut out = vec![value.to_string()];
        match shape(value) {
            Some(Shape::Time { hour, minute }) => {
                let (h12, ampm) = twelve_hour(hour);
                let mm = format!("{minute:02}");
                let daypart = daypart(hour);
                if minute == 0 {
                    out.extend([
                        format!("{h12} {ampm}"),
                        format!("{h12}{ampm}"),
                        format!("{h12}:00 {ampm}"),
                        format!("{h12}:00{ampm}"),
                        format!("{h12} {}", dotted(ampm)),
                        format!("{h12} {daypart}"),
                        format!("{h12} o'clock {daypart}"),
                        format!("{h12} o'clock"),
                    ]);
                    if hour == 12 {
                        out.extend(["noon".to_string(), "12 noon".to_string()]);
                    }
                } else {
                    out.extend([
                        format!("{h12}:{mm} {ampm}"),
                        format!("{h12}:{mm}{ampm}"),
                        format!("{h12}:{mm} {}", dotted(ampm)),
                        format!("{h12}:{mm} {daypart}"),
                    ]);
                    let past = match minute {
                        15 => Some("quarter past"),
                        30 => Some("half past"),
                        _ => None,
                    };
                    if let Some(p) = past {
                        out.extend([
                            format!("{p} {h12} {daypart}"),
                            format!("{p} {h12} {ampm}"),
                            format!("{p} {h12}"),
                        ]);
                    }
                    out.push(format!("{h12}:{mm}"));
                }
            }
            Some(Shape::Date(day)) => {
                let (month, d) = month_day(day);
                if let Some(today) = self.today {
                    match day - today {
                        0 => out.extend(["today".to_string(), "tonight".to_string()]),
                        1 => out.push("tomorrow".to_string()),
                        2 => out.extend([
                            "the day after tomorrow".to_string(),
                            "day after tomorrow".to_string(),
                        ]),
                        _ => {}
                    }
                    if (1..=7).contains(&(day - today)) {
                        let w = weekday_name(day);
                        out.extend([
                            format!("next {w}"),
                            format!("this {w}"),
                            format!("this coming {w}"),
                            w.to_string(),
                        ]);
                    }
                }
                out.extend([
                    format!("{month} {}", ordinal(d)),
                    format!("{month} {d}"),
                    format!("the {} of {month}", ordinal(d)),
                    format!("{} of {month}", ordinal(d)),
                ]);
                if self.today.is_some_and(|t| same_month(t, day)) {
                    out.push(format!("the {}", ordinal(d)));
                }
            }
            Some(Shape::Count(n)) => out.push(UNITS[n].to_string()),
            None => {}
        }
        out
    }

    /// One way to say `value` in a message: mostly the forms people use, sometimes the canonical
    /// one. Values of no known shape are said as they are.
    pub fn say(&self, value: &str, rng: &mut impl Rng) -> String {
        let Some(s) = shape(value) else {
            return value.to_string();
        };
        if rng.random_bool(0.1) {
            return value.to_string();
        }
        let forms: Vec<String> = match s {
            Shape::Time { hour, minute } => {
                let (h12, ampm) = twelve_hour(hour);
                let daypart = daypart(hour);
                if minute == 0 {
                    vec![
                        format!("{h12} {ampm}"),
                        format!("{h12} {ampm}"),
                        format!("{h12}{ampm}"),
                        format!("{h12} {daypart}"),
                    ]
                } else {
                    vec![
                        format!("{h12}:{minute:02} {ampm}"),
                        format!("{h12}:{minute:02} {ampm}"),
                        format!("{h12}:{minute:02}{ampm}"),
                        format!("{h12}:{minute:02} {daypart}"),
                    ]
                }
            }
            Shape::Date(day) => {
                let (month, d) = month_day(day);
                let mut f = vec![format!("{month} {}", ordinal(d)), format!("{month} {d}")];
                if let Some(today) = self.today {
                    let ahead = day - today;
                    let relative = match ahead {
                        0 => Some("today"),
                        1 => Some("tomorrow"),
                        2 => Some("the day after tomorrow"),
                        _ => None,
                    };
                    if let Some(r) = relative {
                        // Near dates are mostly said relatively, as people do.
                        f.extend([r.to_string(), r.to_string(), r.to_string()]);
                    }
                    if (1..=7).contains(&ahead) {
                        let w = weekday_name(day);
                        f.extend([format!("next {w}"), format!("this {w}")]);
                    }
                    if same_month(today, day) {
                        f.push(format!("the {}", ordinal(d)));
                    }
                }
                f
            }
            Shape::Count(n) => vec![n.to_string(), n.to_string(), UNITS[n].to_string()],
        };
        forms.choose(rng).expect("non-empty").clone()
    }
}

fn twelve_hour(hour: u32) -> (u32, &'static str) {
    let h12 = if hour.is_multiple_of(12) {
        12
    } else {
        hour % 12
    };
    (h12, if hour < 12 { "am" } else { "pm" })
}

fn dotted(ampm: &str) -> &'static str {
    if ampm == "am" {
        "a.m."
    } else {
        "p.m."
    }
}

/// The part of the day the normalizers read as am (morning) or pm (the others).
fn daypart(hour: u32) -> &'static str {
    match hour {
        0..=11 => "in the morning",
        12..=16 => "in the afternoon",
        17..=20 => "in the evening",
        _ => "at night",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn forms_of_times_dates_and_counts() {
        let s = Spoken::new("2019-03-01");
        let t = s.forms("19:30");
        for f in [
            "19:30",
            "7:30 pm",
            "7:30pm",
            "half past 7 in the evening",
            "7:30",
        ] {
            assert!(t.contains(&f.to_string()), "{f} in {t:?}");
        }
        let t = s.forms("12:00");
        assert!(t.contains(&"12 pm".to_string()) && t.contains(&"noon".to_string()));
        assert!(s.forms("11:00").contains(&"11 am".to_string()));
        // 2019-03-01 was a Friday.
        let d = s.forms("2019-03-08");
        for f in ["next Friday", "March 8th", "the 8th", "8th of March"] {
            assert!(d.contains(&f.to_string()), "{f} in {d:?}");
        }
        assert!(s.forms("2019-03-01").contains(&"today".to_string()));
        assert!(s.forms("2019-03-02").contains(&"tomorrow".to_string()));
        assert!(s
            .forms("2019-03-03")
            .contains(&"the day after tomorrow".to_string()));
        assert!(!s.forms("2019-03-12").iter().any(|f| f.starts_with("next")));
        assert_eq!(s.forms("4"), vec!["4", "four"]);
        assert_eq!(s.forms("San Jose"), vec!["San Jose"]);
        assert_eq!(
            s.forms("1"),
            vec!["1"],
            "\"one\" is too common a word to read as a value"
        );
    }

    #[test]
    fn said_forms_are_forms() {
        let s = Spoken::new("2019-03-01");
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for v in [
            "19:30",
            "12:00",
            "09:15",
            "2019-03-01",
            "2019-03-06",
            "2019-04-20",
            "3",
        ] {
            let forms = s.forms(v);
            for _ in 0..50 {
                let said = s.say(v, &mut rng);
                assert!(forms.contains(&said), "{said:?} for {v} not in {forms:?}");
            }
        }
    }
}
