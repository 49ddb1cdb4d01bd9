//! Text normalization shared by training and prediction: clock times and dates in messages are
//! rewritten to the canonical forms service calls use (`19:45`, `2019-03-12`), so that a value
//! the user or the assistant said is the same tokens as the argument and can be copied. Words
//! are also compared folded ([`folded`]): a categorical value the user said in any case, an
//! evidence word of an optional argument.
//!
//! Measured motivation (MEASUREMENTS.md): without it the student had to *convert* "7:45 pm" to
//! `19:45` and "next Friday" to `2019-03-08` with its vocabulary head, and got the hour or the
//! day wrong on half of the reservations. Relative dates resolve against the task's reference
//! date ("today" in the data). Times are read by the judge's parser
//! ([`tracelab::judge::normalize::parse_time`]), so the forms SGD's users say ("half past 5 in
//! the evening", "a quarter to 8 pm", "twelve pm", "evening 5:30", "noon": about 40% of the
//! times Restaurants_1 users say) become the canonical value the call carries, as the judge
//! reads them.

use regex::{Captures, Regex};
use tracelab::dates::{Date, MONTHS, WEEKDAYS};
use tracelab::judge::normalize::{format_time, parse_time, UNITS};

/// Words after a number that make it a count ("evening 2 people"), not an hour.
const COUNT_WORDS: &[&str] = &[
    "people", "persons", "person", "guests", "of", "seats", "diners",
];

/// Rewrites times and dates in text.
#[derive(Debug, Clone)]
pub struct Normalizer {
    /// Reference date `(year, month, day)`; `None` leaves dates alone.
    reference: Option<(i64, i64, i64)>,
    time_re: Regex,
    month_day_re: Regex,
    day_of_re: Regex,
    relative_re: Regex,
    weekday_re: Regex,
}

/// Days since 1970-01-01 of a civil date; out-of-range days roll over ("February 30").
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    Date {
        year: y as i32,
        month: m as u32,
        day: d as u32,
    }
    .days()
}

fn iso(days: i64) -> String {
    Date::from_days(days).to_string()
}

impl Normalizer {
    /// A normalizer; `reference_date` (`YYYY-MM-DD`) enables date rewriting.
    pub fn new(reference_date: Option<&str>) -> Normalizer {
        let reference = reference_date.and_then(|s| {
            let mut it = s.trim().split('-').map(|p| p.parse::<i64>().ok());
            Some((it.next()??, it.next()??, it.next()??))
        });
        let months = MONTHS.join("|");
        Normalizer {
            reference,
            time_re: Regex::new(&format!(
                r"(?i)\b(?:a\s+)?(?:(?P<noon>(?:12\s+)?noon)|(?P<time>{rel}?(?:\d{{1,2}}|{hours})(?::\d{{2}})?{oclock}\s*(?:{marker})|(?:morning|afternoon|evening|night),?\s+(?:at\s+)?\d{{1,2}}(?::\d{{2}})?))(?P<tail>\W|$)",
                rel = r"(?:(?:half|quarter)\s+(?:past|to)\s+)",
                hours = UNITS[1..=12].join("|"),
                oclock = r"(?:\s*o'?\s?clock)?",
                marker = r"a\.?m\.?|p\.?m\.?|in the morning|in the afternoon|in the evening|at night",
            ))
            .expect("valid regex"),
            month_day_re: Regex::new(&format!(
                r"(?i)\b({months})\s+(\d{{1,2}})(?:st|nd|rd|th)?\b"
            ))
            .expect("valid regex"),
            day_of_re: Regex::new(&format!(
                r"(?i)\b(?:the\s+)?(\d{{1,2}})(?:st|nd|rd|th)(?:\s+of\s+(?:({months})|this month))?\b"
            ))
            .expect("valid regex"),
            relative_re: Regex::new(r"(?i)\b(day after tomorrow|tomorrow|today|tonight)\b")
                .expect("valid regex"),
            weekday_re: Regex::new(&format!(
                r"(?i)\b(?:(?:next|this|on|coming)\s+)({})\b",
                WEEKDAYS.join("|")
            ))
            .expect("valid regex"),
        }
    }

    /// Rewrites every recognized time and (with a reference date) date in `text`.
    pub fn text(&self, text: &str) -> String {
        let out = self.time_re.replace_all(text, |c: &Captures| {
            let whole = c.get(0).expect("match");
            // The character that ended the match (space, punctuation) stays.
            let tail = &c["tail"];
            if c.name("noon").is_some() {
                return format!("12:00{tail}");
            }
            // "evening 2 people" is a count, not a time.
            let said = &c["time"];
            let counted = said.ends_with(|ch: char| ch.is_ascii_digit())
                && text[whole.end()..]
                    .split_whitespace()
                    .next()
                    .is_some_and(|w| COUNT_WORDS.contains(&w.to_ascii_lowercase().as_str()));
            // The judge's reader of times; a time with two readings (no marker) stays as said.
            match parse_time(said).as_slice() {
                [m] if !counted => format!("{}{tail}", format_time(*m)),
                _ => whole.as_str().to_string(),
            }
        });
        let Some((y, mo, d)) = self.reference else {
            return out.into_owned();
        };
        let today = days_from_civil(y, mo, d);
        let out = self.relative_re.replace_all(&out, |c: &Captures| {
            let k = c[1].to_ascii_lowercase();
            let offset = match k.as_str() {
                "tomorrow" => 1,
                "day after tomorrow" => 2,
                _ => 0,
            };
            iso(today + offset)
        });
        let out = self.month_day_re.replace_all(&out, |c: &Captures| {
            let m = MONTHS
                .iter()
                .position(|x| x.eq_ignore_ascii_case(&c[1]))
                .unwrap_or(0) as i64
                + 1;
            let day: i64 = c[2].parse().unwrap_or(0);
            if !(1..=31).contains(&day) {
                return c[0].to_string();
            }
            iso(days_from_civil(y, m, day))
        });
        let hay = out.into_owned();
        let out = self.day_of_re.replace_all(&hay, |c: &Captures| {
            let whole = c.get(0).expect("match");
            // "1434 1st Street", "3rd Avenue": an ordinal in an address is not a date. Rewriting
            // it garbled addresses and phone-number-like copies in tool results.
            if in_address(&hay[..whole.start()], &hay[whole.end()..]) {
                return c[0].to_string();
            }
            let day: i64 = c[1].parse().unwrap_or(0);
            if !(1..=31).contains(&day) {
                return c[0].to_string();
            }
            let m = c.get(2).map_or(mo, |name| {
                MONTHS
                    .iter()
                    .position(|x| x.eq_ignore_ascii_case(name.as_str()))
                    .unwrap_or(0) as i64
                    + 1
            });
            iso(days_from_civil(y, m, day))
        });
        let out = self.weekday_re.replace_all(&out, |c: &Captures| {
            let w = WEEKDAYS
                .iter()
                .position(|x| x.eq_ignore_ascii_case(&c[1]))
                .unwrap_or(0) as i64;
            // 1970-01-01 was a Thursday (index 3).
            let today_w = (today + 3).rem_euclid(7);
            let ahead = (w - today_w).rem_euclid(7);
            iso(today + if ahead == 0 { 7 } else { ahead })
        });
        out.into_owned()
    }
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

/// Lower case, every run of other characters than letters and digits one space: "Asian" and
/// "asian," fold alike.
pub fn folded(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push(' ');
    for c in text.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with(' ') {
            out.push(' ');
        }
    }
    if !out.ends_with(' ') {
        out.push(' ');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_in_addresses_stay() {
        let n = Normalizer::new(Some("2019-03-01"));
        assert_eq!(n.text("1434 1st Street"), "1434 1st Street");
        assert_eq!(n.text("on 3rd Avenue."), "on 3rd Avenue.");
        assert_eq!(n.text("the 12th at 5 pm"), "2019-03-12 at 17:00");
    }

    #[test]
    fn every_time_the_teacher_says_reads_back_as_its_value() {
        let n = Normalizer::new(Some("2019-03-01"));
        let spoken = tracelab::teacher::spoken::Spoken::new("2019-03-01");
        for hour in 0..24 {
            for minute in [0, 15, 30, 45] {
                let value = format!("{hour:02}:{minute:02}");
                for form in spoken.forms(&value) {
                    // A form with no part of the day ("7:30", "half past 7", "7 o'clock") is
                    // either time; it stays as said.
                    let marked = [
                        "am",
                        "pm",
                        "a.m.",
                        "p.m.",
                        "morning",
                        "afternoon",
                        "evening",
                        "night",
                        "noon",
                    ]
                    .iter()
                    .any(|m| form.ends_with(m));
                    let expected = if marked {
                        value.as_str()
                    } else {
                        form.as_str()
                    };
                    let read = n.text(&format!("at {form} please"));
                    assert_eq!(read, format!("at {expected} please"), "{form} for {value}");
                }
            }
        }
    }

    #[test]
    fn times_and_dates_become_canonical() {
        let n = Normalizer::new(Some("2019-03-01"));
        assert_eq!(n.text("at 7:45 pm today."), "at 19:45 2019-03-01.");
        assert_eq!(n.text("12 pm on March 12th"), "12:00 on 2019-03-12");
        assert_eq!(n.text("1:30 in the afternoon"), "13:30");
        assert_eq!(
            n.text("11:30 am, the 12th of this month"),
            "11:30, 2019-03-12"
        );
        assert_eq!(
            n.text("next Friday and this Sunday"),
            "2019-03-08 and 2019-03-03"
        );
        assert_eq!(n.text("the day after tomorrow"), "the 2019-03-03");
        assert_eq!(n.text("Sukho Thai at 17:00"), "Sukho Thai at 17:00");
        // How SGD's users say times: spoken quarters and halves, hours in words, the part of
        // the day first, noon.
        for (said, canonical) in [
            ("half past 5 in the evening please.", "17:30 please."),
            ("at a quarter past 12 in the afternoon", "at 12:15"),
            ("Book it at quarter to 8 in the evening", "Book it at 19:45"),
            ("a quarter to 12 in the morning", "11:45"),
            ("at quarter to 1 in the afternoon", "at 12:45"),
            ("for twelve pm at a restaurant", "for 12:00 at a restaurant"),
            ("at seven in the evening.", "at 19:00."),
            ("Eleven am works", "11:00 works"),
            (
                "on the 14th of March at evening 5:30.",
                "on 2019-03-14 at 17:30.",
            ),
            ("afternoon 2.", "14:00."),
            ("7 o'clock in the evening", "19:00"),
            ("at noon or 12 noon", "at 12:00 or 12:00"),
            ("5 p.m. today", "17:00 2019-03-01"),
        ] {
            assert_eq!(n.text(said), canonical, "{said}");
        }
        // Not times: a count after a part of the day, an hour with no marker, words that
        // begin like one.
        for same in [
            "Saturday evening 2 people",
            "at 7 o'clock",
            "at 5",
            "5 amazing places",
            "in the afternoon",
        ] {
            assert_eq!(n.text(same), same);
        }
        let plain = Normalizer::new(None);
        assert_eq!(plain.text("tomorrow at 6 pm"), "tomorrow at 18:00");
    }
}
