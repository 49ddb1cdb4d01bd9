//! Numbers in digits or words ("2", "two", "twenty-one", "one hundred and five"), alone or with
//! the words that may surround a count ("2 people", "party of four").

use super::fold;

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
/// Tens words from twenty to ninety, indexed by (value - 20) / 10.
pub const TENS: [&str; 8] = [
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

/// Words that may surround a count without changing it ("a table for 2 people").
const COUNT_FILLER: &[&str] = &[
    "people", "persons", "person", "guests", "guest", "adults", "adult", "pax", "of", "for", "a",
    "party", "table", "seats", "seat", "us", "diners", "tickets", "ticket", "rooms", "room",
    "nights", "night",
];

/// Parses a run of number words ("twenty one", "forty-five", "a hundred") into its value.
pub(crate) fn number_words(ws: &[&str]) -> Option<u32> {
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
pub(crate) fn token_number(w: &str) -> Option<u32> {
    if !w.is_empty() && w.len() <= 4 && w.chars().all(|c| c.is_ascii_digit()) {
        return w.parse().ok();
    }
    number_words(&[w])
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
