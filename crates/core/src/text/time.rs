//! Clock times: [`parse_time`] reads a whole value into every plausible reading ("6" is 06:00 or
//! 18:00); [`find_times`] finds the times a message states, only where a cue makes them times
//! (am/pm, a part of the day, a colon, "half past", noon), each with its one reading.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

use super::fold;
use super::number::{self, UNITS};

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
        ([h], Some(m)) => (number::token_number(h), m),
        ([h], None) => (number::token_number(h), 0),
        ([h, rest @ ..], None) if !rest.is_empty() => {
            // "six thirty", "seven forty five", "6 30"
            let m = if rest.len() == 1 {
                number::token_number(rest[0])
            } else {
                number::number_words(rest)
            };
            match m {
                Some(m) if m < 60 => (number::token_number(h), m),
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

/// `(hour, minute)` of a value written as a 24-hour clock reading, `H:MM` or `HH:MM` (the form
/// tool calls carry); `None` for anything else.
pub fn parse_clock(value: &str) -> Option<(u32, u32)> {
    let (h, m) = value.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(h) && h.len() <= 2 && digits(m) && m.len() == 2) {
        return None;
    }
    let (hour, minute) = (h.parse().ok()?, m.parse().ok()?);
    (hour < 24 && minute < 60).then_some((hour, minute))
}

/// A time a message states: a time of day said with a cue that makes it one.
static TIME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\b(?:a\s+)?(?:(?P<noon>(?:12\s+)?noon)|(?P<marked>{rel}?(?:\d{{1,2}}|{hours})(?::\d{{2}})?{oclock}\s*(?:{marker}))|(?P<daypart>(?:morning|afternoon|evening|night),?\s+(?:at\s+)?\d{{1,2}}(?::\d{{2}})?{oclock}(?:\s*(?:{ampm}))?)|(?P<clock>\d{{1,2}}:\d{{2}}))(?P<tail>\W|$)",
        rel = r"(?:(?:half|quarter)\s+(?:past|to)\s+)",
        hours = UNITS[1..=12].join("|"),
        oclock = r"(?:\s*o'?\s?clock)?",
        marker = r"a\.?m\.?|p\.?m\.?|in the morning|in the afternoon|in the evening|at night",
        ampm = r"a\.?m\.?|p\.?m\.?",
    ))
    .expect("valid regex")
});

/// Closed-class words (conjunctions, prepositions, auxiliaries, pronouns) that may follow a
/// time: "evening 7 please", "evening 7 and …". Any other word after a bare number makes the
/// number a quantity of that word ("evening 2 tickets", "3 nights", "2 people"). "of" is left
/// out on purpose: "2 of us" counts.
const AFTER_TIME: &[&str] = &[
    "please", "and", "or", "but", "so", "then", "if", "for", "on", "at", "in", "is", "would",
    "will", "should", "could", "can", "works", "sounds", "i", "we", "it", "that", "this", "thanks",
    "thank", "tonight", "today", "tomorrow", "sharp",
];

/// Whether the words after a bare number (`after`) make it a quantity rather than a clock time.
fn counts_something(after: &str) -> bool {
    let next: String = after
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphabetic() || *c == '\'')
        .collect::<String>()
        .to_lowercase();
    !next.is_empty() && !AFTER_TIME.contains(&next.as_str())
}

/// The clock times `text` states, in order, as byte ranges (without the character that ends
/// them) and their one reading. A time needs a cue: am/pm ("7:45 pm", "6pm", "twelve pm"), a
/// part of the day after it ("half past 5 in the evening") or before it ("evening 5:30"),
/// "o'clock" with a part of the day, noon, or a colon with one reading ("19:45"; "7:30" could
/// be morning or evening and is left out). A bare number is no time, and neither is a number
/// that counts the word after it ("evening 2 tickets").
pub fn find_times(text: &str) -> Vec<(Range<usize>, Minutes)> {
    find_time_readings(text)
        .into_iter()
        .filter_map(|(r, readings)| match readings.as_slice() {
            [m] => Some((r, *m)),
            _ => None,
        })
        .collect()
}

/// [`find_times`] with the times that have more than one reading kept, each with all of them
/// ("7:30": 07:30 and 19:30). A rewriter needs the one reading; a reader that asks "could this
/// be the time the user gave" takes every one.
pub fn find_time_readings(text: &str) -> Vec<(Range<usize>, Vec<Minutes>)> {
    let mut out = Vec::new();
    for c in TIME_RE.captures_iter(text) {
        let whole = c.get(0).expect("match");
        let end = c.name("tail").map_or(whole.end(), |t| t.start());
        let range = whole.start()..end;
        if c.name("noon").is_some() {
            out.push((range, vec![12 * 60]));
            continue;
        }
        // The time itself, without a leading "a" ("a quarter to 8 pm"), which the span keeps.
        let said = ["marked", "daypart", "clock"]
            .iter()
            .find_map(|g| c.name(g))
            .map_or("", |m| m.as_str());
        let after = &text[end..];
        // "18:30:00", "10:30.5": not a time as said; "at 13:15." ends a sentence.
        let mut next = after.chars();
        if c.name("clock").is_some()
            && matches!(next.next(), Some(':' | '.'))
            && next.next().is_some_and(|ch| ch.is_ascii_digit())
        {
            continue;
        }
        // "evening 2" then a word: a count of that word, unless a colon or a marker made it a time.
        let bare = said.ends_with(|ch: char| ch.is_ascii_digit()) && !said.contains(':');
        if c.name("daypart").is_some() && bare && counts_something(after) {
            continue;
        }
        let readings = parse_time(said);
        if !readings.is_empty() {
            out.push((range, readings));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// `find_times` on `text`, as (said, HH:MM) pairs.
    fn found(text: &str) -> Vec<(&str, String)> {
        find_times(text)
            .into_iter()
            .map(|(r, m)| (&text[r], format_time(m)))
            .collect()
    }

    #[test]
    fn finds_times_said_with_a_cue() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("at 7:45 pm today.", &[("7:45 pm", "19:45")]),
            ("19:45 works", &[("19:45", "19:45")]),
            ("I need it for 13:15.", &[("13:15", "13:15")]),
            (
                "half past 5 in the evening please",
                &[("half past 5 in the evening", "17:30")],
            ),
            (
                "at noon or 12 noon",
                &[("noon", "12:00"), ("12 noon", "12:00")],
            ),
            ("evening 5:30.", &[("evening 5:30", "17:30")]),
            ("at a quarter to 8 pm", &[("a quarter to 8 pm", "19:45")]),
            ("Eleven am works", &[("Eleven am", "11:00")]),
            ("afternoon 2.", &[("afternoon 2", "14:00")]),
            ("evening 7 please", &[("evening 7", "19:00")]),
            ("evening 7 pm tickets", &[("evening 7 pm", "19:00")]),
            ("at 7 in the evening", &[("7 in the evening", "19:00")]),
            (
                "from 6pm to 9 p.m.",
                &[("6pm", "18:00"), ("9 p.m.", "21:00")],
            ),
        ];
        for (text, want) in cases {
            let want: Vec<(&str, String)> = want.iter().map(|(s, t)| (*s, t.to_string())).collect();
            assert_eq!(found(text), want, "{text}");
        }
    }

    #[test]
    fn clock_values() {
        assert_eq!(parse_clock("19:30"), Some((19, 30)));
        assert_eq!(parse_clock("9:05"), Some((9, 5)));
        for no in ["24:00", "7:5", "7:30 pm", "123:00", "ab:cd", "19"] {
            assert_eq!(parse_clock(no), None, "{no}");
        }
    }

    #[test]
    fn numbers_without_a_time_cue_are_no_times() {
        for text in [
            "at 5",
            "at 7 o'clock",
            "7:30 works",
            "5 amazing places",
            "in the afternoon",
            "2 tickets for the evening show",
            "3 nights",
            "evening 2 tickets",
            "Saturday evening 2 people",
            "evening 4 of us",
            "it ends at 18:30:00",
            "call 415-555-1234",
        ] {
            assert_eq!(found(text), vec![], "{text}");
        }
    }

    #[test]
    fn readings_keep_times_with_two() {
        let text = "7:30 works, or 19:45, not 3 nights";
        let got: Vec<(&str, Vec<String>)> = find_time_readings(text)
            .into_iter()
            .map(|(r, ms)| (&text[r], ms.into_iter().map(format_time).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("7:30", vec!["07:30".to_string(), "19:30".to_string()]),
                ("19:45", vec!["19:45".to_string()]),
            ]
        );
    }
}
