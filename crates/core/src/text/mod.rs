//! The text layer: how tracelab reads values in free text, once, for the offline teacher, the
//! student worker and the judge. Folding ([`fold`], [`folded`]), identifier words
//! ([`identifier_words`]), numbers ([`number`]), clock times ([`time`]), dates ([`date`]) and
//! the forms people say them in ([`spoken`]).
//!
//! Parsers (`parse_*`) read a whole value and return every plausible reading; finders
//! (`find_*`) locate the values a message states and return one reading per span, so a tool that
//! rewrites a message (the student) and one that reads it (the judge) see the same spans. All of
//! it is language-level (English times, dates and numbers): nothing here knows a domain.

pub mod date;
pub mod number;
pub mod spoken;
pub mod time;

pub use date::{find_dates, parse_date};
pub use number::{parse_number, UNITS};
pub use time::{find_time_readings, find_times, format_time, parse_time, Minutes};

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

/// Lower case, every run of other characters than letters and digits one space, with a space at
/// either end: " asian " for "Asian" and "asian,", so a folded phrase is found in a folded
/// message with `contains(" phrase ")`. Unlike [`fold`], apostrophes and `&` are separators.
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

/// Splits `FindRestaurants`, `find_restaurants`, `party-size`, `getHTTPStatus` into lowercase
/// words.
pub fn identifier_words(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, &ch) in chars.iter().enumerate() {
        if ch == '_' || ch == '-' || ch == ' ' || ch == '.' {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if ch.is_uppercase() && !cur.is_empty() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|c| c.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.extend(ch.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn padded_folding() {
        assert_eq!(folded("Asian,  Fusion!"), " asian fusion ");
        assert_eq!(folded(""), " ");
    }

    #[test]
    fn identifier_splitting() {
        for (name, want) in [
            ("FindRestaurants", &["find", "restaurants"][..]),
            ("find_restaurants", &["find", "restaurants"]),
            ("party-size", &["party", "size"]),
            ("getHTTPStatus", &["get", "http", "status"]),
            ("number_of_seats2", &["number", "of", "seats2"]),
        ] {
            assert_eq!(identifier_words(name), want, "{name}");
        }
    }
}
