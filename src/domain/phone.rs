//! Phone numbers as WhatsApp conversations are keyed by: E.164, written `+` and digits.
//!
//! Providers name the user by digits alone (Meta's `wa_id` `4915112345678`, Infobip's
//! `from`), while applications tend to write `+49 151 1234-5678` or
//! `0049 151 12345678`. All of them name one party, so they are brought to one form
//! before a conversation is stored or looked up, and one party keeps one conversation.
//!
//! Pure: the same rules are written in SQL once, in the migration that normalised the
//! rows stored before them (`migrations/*/20261203000005_lifecycle.sql`).

/// Fewest digits of a number, country code included (Niue, Tokelau: 3 + 4).
pub const MIN_PHONE_DIGITS: usize = 7;
/// Most digits of a number, country code included (E.164).
pub const MAX_PHONE_DIGITS: usize = 15;

/// Why a text is not an international phone number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error(
        "must be a phone number in international form, e.g. +4915112345678 (digits, optionally \
         spaced with spaces, dashes, dots or parentheses; a leading 00 counts as +)"
    )]
    NotANumber,
    #[error("must start with the country code: a national number (leading 0) is ambiguous")]
    National,
    #[error("must have {MIN_PHONE_DIGITS} to {MAX_PHONE_DIGITS} digits, country code included")]
    Length,
}

/// The E.164 form of a phone number: `+` and 7 to 15 digits, the first not 0.
///
/// Accepted spellings: digits alone (as providers send them), a leading `+` or `00`
/// (the international prefix), and spaces, dashes, dots and parentheses anywhere
/// between digits; the trunk-prefix notation `(0)` after the country code
/// (`+49 (0)151 ...`) is dropped. Anything else (letters, a second `+`, a national
/// number starting with one 0) is refused.
///
/// # Errors
/// [`PhoneError`] says which rule the text breaks.
pub fn normalise_phone(raw: &str) -> Result<String, PhoneError> {
    let compact: String = raw
        .replace("(0)", "")
        .chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')')))
        .collect();
    let digits = if let Some(rest) = compact.strip_prefix('+') {
        rest
    } else if let Some(rest) = compact.strip_prefix("00") {
        rest
    } else if compact.starts_with('0') {
        return Err(PhoneError::National);
    } else {
        compact.as_str()
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PhoneError::NotANumber);
    }
    if digits.starts_with('0') {
        return Err(PhoneError::National);
    }
    if !(MIN_PHONE_DIGITS..=MAX_PHONE_DIGITS).contains(&digits.len()) {
        return Err(PhoneError::Length);
    }
    Ok(format!("+{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_spelling_of_one_number_is_one_number() {
        for raw in [
            "+4915112345678",
            "4915112345678",
            "004915112345678",
            "+49 151 12345678",
            "+49-151-1234-5678",
            "+49.151.123.456.78",
            "+49 (151) 12345678",
            "+49 (0)151 12345678",
            "0049 (0) 151 123 456 78",
            " +49 151 12345678 ",
            "+49\u{a0}151\u{a0}12345678",
        ] {
            assert_eq!(
                normalise_phone(raw).as_deref(),
                Ok("+4915112345678"),
                "{raw}"
            );
        }
        assert_eq!(
            normalise_phone("16505551234").as_deref(),
            Ok("+16505551234")
        );
        assert_eq!(normalise_phone("+6834002").as_deref(), Ok("+6834002"));
    }

    #[test]
    fn what_is_not_an_international_number_is_refused() {
        use PhoneError::*;
        for (raw, why) in [
            ("", NotANumber),
            ("+", NotANumber),
            ("   ", NotANumber),
            ("user-7", NotANumber),
            ("+49 151 CALL ME", NotANumber),
            ("+49+15112345678", NotANumber),
            ("49151123456789x", NotANumber),
            ("+4915112345678;ext=1", NotANumber),
            ("015112345678", National),
            ("(0151) 12345678", National),
            ("+04915112345678", National),
            ("000491511234567", National),
            ("+123456", Length),
            ("1555", Length),
            ("+1234567890123456", Length),
        ] {
            assert_eq!(normalise_phone(raw), Err(why), "{raw:?}");
        }
    }

    proptest! {
        /// Total over any text; what it accepts is E.164 and normalises to itself.
        #[test]
        fn accepted_numbers_are_e164_and_stable(raw in "\\PC{0,30}") {
            if let Ok(number) = normalise_phone(&raw) {
                let digits = number.strip_prefix('+').unwrap();
                prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()));
                prop_assert!((MIN_PHONE_DIGITS..=MAX_PHONE_DIGITS).contains(&digits.len()));
                prop_assert!(!digits.starts_with('0'));
                prop_assert_eq!(normalise_phone(&number), Ok(number.clone()));
            }
        }

        /// A number spaced out any way, with any prefix, is the same number.
        #[test]
        fn separators_and_prefixes_do_not_matter(
            digits in "[1-9][0-9]{6,14}",
            seps in proptest::collection::vec(prop_oneof![Just(""), Just(" "), Just("-"), Just(".")], 15),
            prefix in prop_oneof![Just(""), Just("+"), Just("00"), Just("+ ")],
        ) {
            let spaced: String = digits
                .chars()
                .zip(seps.iter())
                .map(|(d, sep)| format!("{d}{sep}"))
                .collect();
            prop_assert_eq!(normalise_phone(&format!("{prefix}{spaced}")), Ok(format!("+{digits}")));
        }
    }
}
