//! Shards of a stage's input: the `BACKPRESSURE` hand-offs are spread over [`Shard::COUNT`]
//! streams, each holding the tenants whose id hashes to it, so that an ack on one of them is
//! checked against the consumers of a sixteenth of the tenants, not all of them.
//!
//! nats-server checks, on every ack of a work-queue stream's message, whether any other
//! consumer of the stream still needs it (`stream.ackMsg` → `checkForInterestWithSubject`, one
//! lock and subject match per consumer): a stream with a consumer per tenant pays for every
//! tenant on every ack. Measured with 1,000 tenants (`switchyard-bench --consumer-layout`,
//! `docs/performance.md`, "Which layout nats-server carries cheaper"): 16 shard streams cost
//! nats-server a third of the CPU per message of one shared stream, and a stream per tenant
//! the most (an ack that empties a work-queue stream replaces its last block file).
//!
//! The shard of a tenant is part of the contract between every publisher and the streams:
//! 64-bit FNV-1a of the tenant id's bytes, modulo [`Shard::COUNT`], written as two decimal
//! digits (`07`). Changing either would strand every message stored under the old shard.

use std::fmt;
use std::hash::Hasher;

use switchyard_keys::TenantId;

/// One shard of a sharded stage's input (`00` … `15`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard(u8);

/// The tokens of every shard, indexed by its number.
const TOKENS: [&str; Shard::COUNT as usize] = [
    "00", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13", "14", "15",
];

impl Shard {
    /// How many shards a sharded stage's input has.
    pub const COUNT: u8 = 16;

    /// The shard holding `tenant`'s messages.
    pub fn of(tenant: &TenantId) -> Self {
        let mut hasher = fnv::FnvHasher::default();
        hasher.write(tenant.as_str().as_bytes());
        Self((hasher.finish() % u64::from(Self::COUNT)) as u8)
    }

    /// Every shard, in order.
    pub fn all() -> impl Iterator<Item = Shard> {
        (0..Self::COUNT).map(Shard)
    }

    /// Shard number `n`, if below [`Shard::COUNT`].
    pub fn new(n: u8) -> Option<Self> {
        (n < Self::COUNT).then_some(Self(n))
    }

    /// The shard's number, `0..COUNT`.
    pub fn index(self) -> u8 {
        self.0
    }

    /// The shard's subject token and stream-name suffix: two decimal digits (`07`).
    pub fn token(self) -> &'static str {
        TOKENS[usize::from(self.0)]
    }

    /// The shard a token names (`07`), if it is one.
    pub fn from_token(token: &str) -> Option<Self> {
        TOKENS
            .iter()
            .position(|t| *t == token)
            .map(|n| Self(n as u8))
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_shard_is_fixed_by_the_contract() {
        // 64-bit FNV-1a of the id's bytes, modulo 16: values any publisher must reproduce.
        let shard = |id: &str| Shard::of(&TenantId::new(id).unwrap()).token();
        assert_eq!(shard("acme"), "15");
        assert_eq!(shard("globex"), "14");
        assert_eq!(shard("t0"), "09");
    }

    #[test]
    fn tokens_round_trip_and_cover_every_shard() {
        let all: Vec<Shard> = Shard::all().collect();
        assert_eq!(all.len(), usize::from(Shard::COUNT));
        for shard in all {
            assert_eq!(Shard::from_token(shard.token()), Some(shard));
            assert_eq!(Shard::new(shard.index()), Some(shard));
        }
        assert_eq!(Shard::from_token("16"), None);
        assert_eq!(Shard::from_token("7"), None);
        assert_eq!(Shard::new(Shard::COUNT), None);
    }

    #[test]
    fn many_tenants_spread_over_every_shard() {
        let mut counts = [0u32; Shard::COUNT as usize];
        for n in 0..1000 {
            let tenant = TenantId::new(format!("t{n}")).unwrap();
            counts[usize::from(Shard::of(&tenant).index())] += 1;
        }
        // 1,000 tenants, 62.5 per shard on average: none empty, none holding twice its share.
        assert!(counts.iter().all(|&c| c > 30 && c < 125), "{counts:?}");
    }
}
