//! Size classes of hand-off messages: the last token of a [sized](crate::InputStage::sized)
//! stage's subject says how large the stored message is, so that the bytes each tenant holds
//! in a stream shared by many tenants can be read from the stream's per-subject counts.
//!
//! nats-server keeps, for every subject of a stream, a count of messages but not their bytes
//! (`STREAM.INFO` with `subjects_filter` returns `subject → messages`), and a stream's byte
//! limit is the stream's, not any tenant's. A tenant's bytes in `IDEMPOTENCY` or its
//! `BACKPRESSURE_<shard>` are therefore counted as the sum, over its subjects, of each
//! subject's messages times its class's [`SizeClass::bound`]: never less than what it holds,
//! at most about twice that.
//!
//! Class `k` (`10..=26`) holds messages of up to 2^k bytes plus a sixteenth (`1k` holds up to
//! 1,088 bytes, `1m` up to 1,114,112: a 1 MiB payload with up to 64 KiB of headers, the
//! hand-off streams' `max_msg_size`). Its token is the power of two in `k`/`m` (`1k` … `512k`,
//! `1m` … `64m`); a message larger than the last class is counted as that class.

use std::fmt;

/// The size class of a stored hand-off message (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SizeClass(u8);

/// The tokens of every class, smallest first (class `k` at index `k - 10`).
const TOKENS: [&str; 17] = [
    "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k", "256k", "512k", "1m", "2m", "4m", "8m",
    "16m", "32m", "64m",
];

/// The exponent of the smallest class (1 KiB).
const SMALLEST: u8 = 10;

impl SizeClass {
    /// The smallest class: messages of up to 1,088 bytes. A sized stage's subject without a
    /// class token (published before classes existed, or by hand) is counted as this class.
    pub const SMALLEST: SizeClass = SizeClass(SMALLEST);

    /// The largest class (64 MiB and a sixteenth); larger messages are counted as it.
    pub const LARGEST: SizeClass = SizeClass(SMALLEST + TOKENS.len() as u8 - 1);

    /// The class of a message whose stored size (headers and payload, in bytes) is `bytes`:
    /// the smallest whose [`bound`](Self::bound) is at least `bytes`.
    pub fn of(bytes: usize) -> Self {
        let bytes = bytes as u64;
        (SMALLEST..=Self::LARGEST.0)
            .map(SizeClass)
            .find(|class| bytes <= class.bound())
            .unwrap_or(Self::LARGEST)
    }

    /// The most bytes a message of this class holds: 2^k + 2^k / 16.
    pub fn bound(self) -> u64 {
        let power = 1u64 << self.0;
        power + power / 16
    }

    /// The class's subject token (`1k`, `256k`, `1m`).
    pub fn token(self) -> &'static str {
        TOKENS[usize::from(self.0 - SMALLEST)]
    }

    /// The class a token names, if it is one.
    pub fn from_token(token: &str) -> Option<Self> {
        TOKENS
            .iter()
            .position(|t| *t == token)
            .map(|n| SizeClass(SMALLEST + n as u8))
    }
}

impl fmt::Display for SizeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_counted_at_its_class_bound_never_below_its_size() {
        assert_eq!(SizeClass::of(0), SizeClass::SMALLEST);
        assert_eq!(SizeClass::of(1088).token(), "1k");
        assert_eq!(SizeClass::of(1089).token(), "2k");
        // A 1 MiB payload with its envelope headers stays in the 1 MiB class.
        assert_eq!(SizeClass::of(1024 * 1024 + 64 * 1024).token(), "1m");
        assert_eq!(SizeClass::of(1024 * 1024 + 64 * 1024 + 1).token(), "2m");
        assert_eq!(SizeClass::of(usize::MAX), SizeClass::LARGEST);
        for bytes in [0usize, 1, 700, 1500, 40_000, 300_000, 1_000_000, 5_000_000] {
            let class = SizeClass::of(bytes);
            assert!(class.bound() >= bytes as u64, "{bytes} in {class}");
            assert!(
                class == SizeClass::SMALLEST || class.bound() < 2 * bytes as u64 + 2,
                "{bytes} in {class}: counted at most about twice"
            );
        }
    }

    #[test]
    fn tokens_round_trip() {
        for token in TOKENS {
            let class = SizeClass::from_token(token).unwrap();
            assert_eq!(class.token(), token);
            assert_eq!(SizeClass::of(class.bound() as usize), class);
        }
        assert_eq!(SizeClass::LARGEST.token(), "64m");
        assert_eq!(SizeClass::from_token("3k"), None);
        assert_eq!(SizeClass::from_token("1K"), None);
    }
}
