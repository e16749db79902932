//! Producer message ids and the reversible encoding of arbitrary text into one token.
//!
//! **Encoding (documented contract):** bytes `[A-Za-z0-9_-]` stand for themselves; every other
//! byte of the UTF-8 text, `=` included, becomes `=` followed by two upper-case hex digits
//! (`a.b` → `a=2Eb`, `✓` → `=E2=9C=93`). The output alphabet `[A-Za-z0-9_=-]` is valid in a
//! NATS subject token and in a KV key token, and has no `.`, `*`, `>`, `/` or whitespace, so
//! encoded text can never add a token, a wildcard or a key separator. Decoding accepts only
//! the canonical form (upper-case hex, no escaped pass-through byte, valid UTF-8), so encoding
//! is a bijection between non-empty text and valid tokens.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{KeyError, shown};

/// The longest producer message id, in bytes of UTF-8. Encoded, it is at most three times
/// as long (3 KiB), which keeps a KV key well inside NATS's default 4 KiB control line.
pub const MAX_MSG_ID_LEN: usize = 1024;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn passes_through(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Encodes text into a subject/KV-safe token (see the module docs). Empty text encodes to an
/// empty string, which is not a valid token: callers encode only non-empty values such as
/// [`MsgId`].
pub fn encode_token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if passes_through(b) {
            out.push(b as char);
        } else {
            out.push('=');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes a token produced by [`encode_token`]; refuses anything that is not a canonical
/// encoding.
pub fn decode_token(token: &str) -> Result<String, KeyError> {
    let malformed = |reason| KeyError::MalformedToken {
        value: shown(token),
        reason,
    };
    if token.is_empty() {
        return Err(malformed("empty token"));
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if passes_through(b) {
            out.push(b);
            i += 1;
        } else if b == b'=' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(malformed(
                    "'=' must be followed by two upper-case hex digits",
                ));
            };
            let decoded = hi << 4 | lo;
            if passes_through(decoded) {
                return Err(malformed("escaped byte that must stand for itself"));
            }
            out.push(decoded);
            i += 3;
        } else {
            return Err(malformed("character outside [A-Za-z0-9_=-]"));
        }
    }
    String::from_utf8(out).map_err(|_| malformed("decodes to invalid UTF-8"))
}

/// A producer's message id (its `Nats-Msg-Id`, the idempotency key): any UTF-8 text of 1 to
/// [`MAX_MSG_ID_LEN`] bytes that neither starts nor ends with whitespace (NATS trims header
/// values in transit, so a padded id could not mean the same thing over NATS and HTTP) and
/// has no control character but tab (a header value cannot carry CR, LF or NUL). It is never put raw into a subject or key, only through
/// [`MsgId::to_token`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MsgId(String);

impl MsgId {
    /// Validates a producer message id (length, no surrounding whitespace, no control
    /// characters but tab).
    pub fn new(value: impl Into<String>) -> Result<Self, KeyError> {
        let value = value.into();
        if value.is_empty() {
            return Err(KeyError::Empty { kind: "msg id" });
        }
        if value.len() > MAX_MSG_ID_LEN {
            return Err(KeyError::TooLong {
                kind: "msg id",
                len: value.len(),
                max: MAX_MSG_ID_LEN,
            });
        }
        if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
            return Err(KeyError::Padded {
                kind: "msg id",
                value: shown(&value),
            });
        }
        if let Some((at, found)) = value
            .char_indices()
            .find(|(_, c)| c.is_control() && *c != '\t')
        {
            return Err(KeyError::InvalidChar {
                kind: "msg id",
                value: shown(&value),
                found,
                at,
                allowed: "any UTF-8 but control characters (tab excepted)",
            });
        }
        Ok(Self(value))
    }

    /// The id as the producer sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id encoded as one subject/KV token.
    pub fn to_token(&self) -> String {
        encode_token(&self.0)
    }

    /// Parses an encoded token back into the id.
    pub fn from_token(token: &str) -> Result<Self, KeyError> {
        Self::new(decode_token(token)?)
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MsgId {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<MsgId> for String {
    fn from(id: MsgId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn readable_ids_stay_readable() {
        assert_eq!(encode_token("order-42_A"), "order-42_A");
        assert_eq!(encode_token("a.b"), "a=2Eb");
        assert_eq!(encode_token("a=b"), "a=3Db");
        assert_eq!(encode_token("✓"), "=E2=9C=93");
    }

    #[test]
    fn refuses_non_canonical_tokens() {
        for bad in ["", "a.b", "a=2e", "=4", "=41", "a b", "=FF", "*", ">"] {
            assert!(decode_token(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn msg_id_limits() {
        assert!(MsgId::new("").is_err());
        assert!(MsgId::new("x".repeat(MAX_MSG_ID_LEN)).is_ok());
        assert!(MsgId::new("x".repeat(MAX_MSG_ID_LEN + 1)).is_err());
        assert!(MsgId::new(" padded").is_err());
        assert!(MsgId::new("tab\t").is_err());
        assert!(MsgId::new("inner space").is_ok());
        assert!(MsgId::new("in\tner").is_ok());
        for bad in ["a\rb", "a\nb", "a\u{0}b", "a\u{7f}b"] {
            assert!(MsgId::new(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_text_round_trips(text in "\\PC{1,200}|[ -~]{1,64}") {
            let token = encode_token(&text);
            prop_assert_eq!(decode_token(&token).unwrap(), text);
        }

        #[test]
        fn encoded_text_is_one_safe_token(text in any::<String>().prop_filter("non-empty", |s| !s.is_empty())) {
            let token = encode_token(&text);
            prop_assert!(!token.is_empty());
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"_=-".contains(&b)));
        }

        #[test]
        fn valid_tokens_are_canonical(token in "[A-Za-z0-9_-]{0,8}(=[0-9A-F]{2}[A-Za-z0-9_-]{0,4}){0,6}") {
            prop_assume!(!token.is_empty());
            if let Ok(text) = decode_token(&token) {
                prop_assert_eq!(encode_token(&text), token);
            }
        }
    }
}
