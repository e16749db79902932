//! The KV lease: which instance of the dlq service does a piece of work (a replay job, the
//! stats processor), and until when its claim holds.
//!
//! A [`Lease`] is stored inside the record it guards and changes only with that record, by a
//! compare-and-set on the key's revision ([`switchyard_registry::Store::update`]): of several
//! instances writing at once exactly one wins, and a writer holding an old revision must
//! re-read. A [`Leaseholder`] is one instance's side of it: its id, how long a claim lasts, and
//! the rules for taking, renewing and checking a claim, the same for every record that holds a
//! lease.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Which instance holds a claim, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The instance id of the dlq service holding it.
    pub owner: String,
    /// The claim lapses at this time unless renewed.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Lease {
    /// Whether the lease still holds at `now`.
    pub fn holds_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at > now
    }
}

/// One instance's side of its leases.
#[derive(Debug, Clone)]
pub struct Leaseholder {
    /// The instance id written as the owner.
    owner: String,
    /// How long a claim or renewal lasts.
    length: Duration,
}

impl Leaseholder {
    /// The holder `owner`, whose claims last `length`.
    pub fn new(owner: impl Into<String>, length: Duration) -> Self {
        Self {
            owner: owner.into(),
            length,
        }
    }

    /// This instance's id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How long a claim or renewal lasts.
    pub fn length(&self) -> Duration {
        self.length
    }

    /// Whether this instance may take a record whose lease is `current` at `now`: nobody
    /// holds it, the holder's claim lapsed, or it is already ours.
    pub fn may_take(&self, current: Option<&Lease>, now: OffsetDateTime) -> bool {
        current.is_none_or(|l| l.owner == self.owner || !l.holds_at(now))
    }

    /// Whether `current` names this instance (whatever its expiry).
    pub fn owns(&self, current: Option<&Lease>) -> bool {
        current.is_some_and(|l| l.owner == self.owner)
    }

    /// A claim (or a renewal) from `now`.
    pub fn grant(&self, now: OffsetDateTime) -> Lease {
        Lease {
            owner: self.owner.clone(),
            expires_at: now + self.length,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_free_lapsed_or_own_lease_can_be_taken() {
        let now = OffsetDateTime::now_utc();
        let a = Leaseholder::new("a", Duration::from_secs(10));
        let b = Leaseholder::new("b", Duration::from_secs(10));
        assert!(a.may_take(None, now));
        let held = a.grant(now);
        assert!(a.may_take(Some(&held), now));
        assert!(a.owns(Some(&held)));
        assert!(!b.may_take(Some(&held), now));
        assert!(!b.owns(Some(&held)));
        assert!(b.may_take(Some(&held), now + time::Duration::seconds(11)));
    }
}
