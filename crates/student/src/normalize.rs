//! Text normalization shared by training and prediction: clock times and dates in messages are
//! rewritten to the canonical forms service calls use (`19:45`, `2019-03-12`), so that a value
//! the user or the assistant said is the same tokens as the argument and can be copied. Words
//! are also compared folded ([`folded`]): a categorical value the user said in any case, an
//! evidence word of an optional argument.
//!
//! Measured motivation (MEASUREMENTS.md): without it the student had to *convert* "7:45 pm" to
//! `19:45` and "next Friday" to `2019-03-08` with its vocabulary head, and got the hour or the
//! day wrong on half of the reservations. Relative dates resolve against the task's reference
//! date ("today" in the data). The spans rewritten are exactly those the text layer's finders
//! ([`tracelab_core::text::find_times`], [`tracelab_core::text::find_dates`]) return, so the
//! forms SGD's users say ("half past 5 in the evening", "a quarter to 8 pm", "twelve pm",
//! "evening 5:30", "noon": about 40% of the times Restaurants_1 users say) become the canonical
//! value the call carries, read as the judge reads them; a number that counts something
//! ("evening 2 tickets") stays as said.

use std::ops::Range;

use tracelab_core::dates::Date;
use tracelab_core::text::{find_dates, find_times, format_time};

pub use tracelab_core::text::folded;

/// Rewrites times and dates in text.
#[derive(Debug, Clone)]
pub struct Normalizer {
    /// Reference date; `None` leaves dates alone.
    reference: Option<Date>,
}

impl Normalizer {
    /// A normalizer; `reference_date` (`YYYY-MM-DD`) enables date rewriting.
    pub fn new(reference_date: Option<&str>) -> Normalizer {
        Normalizer {
            reference: reference_date.and_then(Date::parse_iso),
        }
    }

    /// Rewrites every time and (with a reference date) date the finders find in `text` to its
    /// canonical form. Where a date overlaps a time, the time wins.
    pub fn text(&self, text: &str) -> String {
        let mut spans: Vec<(Range<usize>, String)> = find_times(text)
            .into_iter()
            .map(|(r, m)| (r, format_time(m)))
            .collect();
        if let Some(today) = self.reference {
            for (r, d) in find_dates(text, today) {
                if !spans
                    .iter()
                    .any(|(t, _)| t.start < r.end && r.start < t.end)
                {
                    spans.push((r, d.to_string()));
                }
            }
        }
        spans.sort_by_key(|(r, _)| r.start);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (r, canonical) in spans {
            out.push_str(&text[at..r.start]);
            out.push_str(&canonical);
            at = r.end;
        }
        out.push_str(&text[at..]);
        out
    }
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
        let spoken = tracelab_core::text::spoken::Spoken::new("2019-03-01");
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
            // Other domains: nights, tickets, check-in dates.
            ("at 7 in the evening", "at 19:00"),
            ("3 nights from March 5th", "3 nights from 2019-03-05"),
            (
                "2 tickets for the evening show at 7:30 pm",
                "2 tickets for the evening show at 19:30",
            ),
            (
                "check out the 8th, evening 2 tickets",
                "check out 2019-03-08, evening 2 tickets",
            ),
        ] {
            assert_eq!(n.text(said), canonical, "{said}");
        }
        // Not times: a count after a part of the day, an hour with no marker, words that
        // begin like one.
        for same in [
            "Saturday evening 2 people",
            "evening 2 tickets",
            "2 tickets for the evening show",
            "3 nights",
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
