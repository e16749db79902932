//! Characters that change how text is displayed without being seen: bidirectional overrides and
//! isolates, zero-width characters, line and paragraph separators, the byte-order mark. Shown
//! raw they can make a name or a log line read differently from what it holds ("Trojan Source",
//! CVE-2021-42574); user text is refused or escaped with them, like control characters.

/// Whether `c` is an invisible formatting character (see the module docs): the soft hyphen
/// U+00AD, U+061C, the Mongolian vowel separator U+180E, U+200B to U+200F, U+2028 to U+202E,
/// U+2060 to U+2064, U+2066 to U+2069, the Hangul fillers U+115F, U+1160, U+3164 and U+FFA0,
/// U+FEFF, and the tag characters U+E0000 to U+E007F.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_overrides_and_zero_width_characters_are_invisible_formatting_letters_are_not() {
        for c in [
            '\u{202E}', '\u{200B}', '\u{2028}', '\u{2066}', '\u{FEFF}', '\u{061C}',
        ] {
            assert!(is_invisible_format(c), "{c:?}");
        }
        for c in ['a', '株', 'é', ' ', '\u{00A0}'] {
            assert!(!is_invisible_format(c), "{c:?}");
        }
    }
}
