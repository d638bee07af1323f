//! Input rules: every string and list has a maximum, and every violation is
//! an [`Error::Invalid`] naming the field. The API documents these bounds.

use crate::Error;

/// Longest email address (RFC 5321 path limit).
pub const EMAIL_CHARS_MAX: usize = 254;
/// Shortest password.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password (argon2 hashes anything, but a bound keeps requests small).
pub const PASSWORD_CHARS_MAX: usize = 128;
/// Longest user, venue or ticket type name.
pub const NAME_CHARS_MAX: usize = 100;
/// Longest event title.
pub const TITLE_CHARS_MAX: usize = 200;
/// Longest event description.
pub const DESCRIPTION_CHARS_MAX: usize = 5_000;
/// Longest city name.
pub const CITY_CHARS_MAX: usize = 100;
/// Most tags on one event.
pub const TAGS_MAX: usize = 10;
/// Longest tag.
pub const TAG_CHARS_MAX: usize = 40;
/// Largest venue capacity.
pub const VENUE_CAPACITY_MAX: u32 = 1_000_000;
/// Largest capacity of one ticket type.
pub const TICKET_CAPACITY_MAX: u32 = 1_000_000;
/// Highest price of one seat, in minor units (429,496.72 in major units):
/// a booking's total, at most 50 seats, then fits the 32 bits of a GraphQL
/// `Int` (`Booking.totalCents`).
pub const PRICE_CENTS_MAX: u32 = 42_949_672;
const _: () = assert!(PRICE_CENTS_MAX as u64 * 50 <= i32::MAX as u64);
/// Most ticket types on one event.
pub const TICKET_TYPES_PER_EVENT_MAX: usize = 50;

/// Trims `text` and checks it is 1..=max characters with no control characters.
pub fn required_text(field: &'static str, text: &str, max: usize) -> Result<String, Error> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    // One line: names, titles, cities and tags are shown inline, so no line
    // breaks or tabs, and nothing that reorders or hides what is shown.
    if trimmed.chars().any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')) {
        return Err(Error::invalid(
            field,
            "must be one line, without control characters (tabs and line breaks included)",
        ));
    }
    if trimmed.chars().any(is_reordering) {
        return Err(Error::invalid(field, "must not contain bidirectional overrides or invisible separators"));
    }
    if trimmed.chars().all(|c| c.is_whitespace() || is_invisible(c)) {
        return Err(Error::invalid(field, "must have a visible character"));
    }
    optional_text(field, trimmed, max)
}

/// Characters that reorder text or hide where words break: bidirectional
/// embeddings, overrides and isolates, zero-width spaces, the byte order
/// mark. A name holding them can pass for another.
fn is_reordering(c: char) -> bool {
    matches!(c, '\u{200B}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Characters that show nothing by themselves (joiners, direction marks,
/// variation selectors, fillers): allowed in a name, not as all of it.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{180E}' | '\u{200C}'..='\u{200F}' | '\u{2800}' | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}' | '\u{FFA0}'
    )
}

/// Like [`required_text`] but allows the empty string, which it keeps as is.
pub fn optional_text(field: &'static str, text: &str, max: usize) -> Result<String, Error> {
    let trimmed = text.trim();
    if trimmed.chars().count() > max {
        return Err(Error::invalid(field, format!("must be at most {max} characters")));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(trimmed.to_string())
}

/// Checks an email's shape: `local@domain.tld`, no spaces, bounded length.
/// Returns it trimmed; uniqueness compares [`email_key`].
pub fn email(text: &str) -> Result<String, Error> {
    let email = text.trim();
    if email.chars().count() > EMAIL_CHARS_MAX {
        return Err(Error::invalid("email", format!("must be at most {EMAIL_CHARS_MAX} characters")));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(Error::invalid("email", "must look like name@example.com"));
    };
    let well_formed = !local.is_empty()
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'))
        && !domain.contains('@')
        && !email.chars().any(|c| {
            c.is_whitespace() || c.is_control() || is_reordering(c) || is_invisible(c) || "\"(),:;<>[\\]".contains(c)
        });
    if !well_formed {
        return Err(Error::invalid("email", "must look like name@example.com"));
    }
    Ok(email.to_string())
}

/// The case-insensitive form of an email, used for uniqueness and sign-in.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Checks a password's length (in characters).
pub fn password(text: &str) -> Result<(), Error> {
    let chars = text.chars().count();
    if chars < PASSWORD_CHARS_MIN {
        return Err(Error::invalid("password", format!("must be at least {PASSWORD_CHARS_MIN} characters")));
    }
    if chars > PASSWORD_CHARS_MAX {
        return Err(Error::invalid("password", format!("must be at most {PASSWORD_CHARS_MAX} characters")));
    }
    if text.chars().all(|c| c.is_whitespace() || c.is_control() || is_reordering(c) || is_invisible(c)) {
        return Err(Error::invalid("password", "must have a visible character"));
    }
    Ok(())
}

/// Normalises tags: trimmed, lower-case, distinct, in the order given.
pub fn tags(tags: &[String]) -> Result<Vec<String>, Error> {
    if tags.len() > TAGS_MAX {
        return Err(Error::invalid("tags", format!("at most {TAGS_MAX} tags")));
    }
    let mut normal: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = required_text("tags", tag, TAG_CHARS_MAX)?.to_lowercase();
        if !normal.contains(&tag) {
            normal.push(tag);
        }
    }
    Ok(normal)
}

/// Checks an ISO 4217-shaped currency code: three upper-case letters.
pub fn currency(code: &str) -> Result<String, Error> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(code.to_string())
    } else {
        Err(Error::invalid("currency", "must be an ISO 4217 code of three upper-case letters, e.g. EUR"))
    }
}

/// Checks `value` is within `min..=max`, naming the field otherwise.
pub fn within(field: &'static str, value: i64, min: i64, max: i64) -> Result<u32, Error> {
    if value < min || value > max {
        return Err(Error::invalid(field, format!("must be between {min} and {max}")));
    }
    u32::try_from(value).map_err(|_| Error::invalid(field, "out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(required_text("title", "  Gig  ", 10).unwrap(), "Gig");
        assert!(required_text("title", "   ", 10).is_err());
        assert!(required_text("title", &"x".repeat(11), 10).is_err());
        assert!(required_text("title", "a\u{0}b", 10).is_err());
        for one_line_only in ["a\nb", "a\tb", "a\rb", "a\u{2028}b", "a\u{2029}b"] {
            assert!(required_text("name", one_line_only, 10).is_err(), "{one_line_only:?}");
        }
        assert!(optional_text("description", "line\n\tline", 20).is_ok(), "a description may have lines");
        for spoof in ["\u{202E}nimda", "ad\u{200B}min", "a\u{2066}b"] {
            assert!(required_text("name", spoof, 20).is_err(), "{spoof:?}");
        }
        for blank in ["\u{200D}", " \u{200C}\u{FE0F} ", "\u{3164}"] {
            assert!(required_text("name", blank, 20).is_err(), "{blank:?}");
        }
        for fine in ["Zoë", "👩\u{200D}🚀 crew", "שלום", "Café\u{200E}"] {
            assert!(required_text("name", fine, 20).is_ok(), "{fine:?}");
        }
        let Error::Invalid { field, .. } = required_text("title", "", 10).unwrap_err() else { panic!() };
        assert_eq!(field, "title");
    }

    #[test]
    fn emails_need_a_domain_with_a_dot() {
        assert!(email("ada@example.com").is_ok());
        assert!(email("ada@localhost").is_err());
        assert!(email("@example.com").is_err());
        assert!(email("ada example@x.com").is_err());
        assert!(email("a@b@c.com").is_err());
        for malformed in ["a@example..com", "a@.example.com", "a@example.com.", "a..b@example.com", ".a@example.com"] {
            assert!(email(malformed).is_err(), "{malformed}");
        }
        for malformed in [
            "\"weird\"x@example.com",
            "a<b@example.com",
            "a@exam(ple).com",
            "a@-example.com",
            "ad\u{200B}a@example.com",
            "ada\u{00AD}@example.com",
            "\u{202E}ada@example.com",
        ] {
            assert!(email(malformed).is_err(), "{malformed}");
        }
        for fine in ["ada.lovelace+tickets@mail.example.co.uk", "o'brien@example.ie", "zoë@example.com"] {
            assert!(email(fine).is_ok(), "{fine}");
        }
        assert_eq!(email_key(" Ada@Example.COM "), "ada@example.com");
    }

    #[test]
    fn passwords_are_bounded() {
        assert!(password("1234567").is_err());
        assert!(password("12345678").is_ok());
        assert!(password(&"x".repeat(129)).is_err());
        assert!(password("        ").is_err(), "only spaces");
        assert!(password("\0\0\0\0\0\0\0\0").is_err(), "only NULs");
        assert!(password("\t\u{7}\n\r \u{1b}\u{7f}\u{85}").is_err(), "only controls and spaces");
        assert!(password("pass\0word").is_ok(), "a control character among others is the user's business");
        for invisible in ["\u{200B}", "\u{FEFF}", "\u{034F}", "\u{2800}", "\u{3164}"] {
            assert!(password(&invisible.repeat(8)).is_err(), "only {invisible:?}");
        }
        assert!(password("  two words  ").is_ok());
    }

    #[test]
    fn tags_are_normalised_and_bounded() {
        let given = vec!["Jazz".to_string(), " jazz ".to_string(), "Live".to_string()];
        assert_eq!(tags(&given).unwrap(), vec!["jazz", "live"]);
        assert!(tags(&vec!["x".to_string(); 11]).is_err());
        assert!(tags(&["".to_string()]).is_err());
    }

    #[test]
    fn currency_is_three_upper_case_letters() {
        assert!(currency("EUR").is_ok());
        assert!(currency("eur").is_err());
        assert!(currency("EURO").is_err());
    }
}
