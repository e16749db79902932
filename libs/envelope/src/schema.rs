//! Envelope schema versions (`Switchyard-Schema`): what each version means, which versions this
//! build reads and which it writes, and the upgrade steps a DLQ replay applies to an entry
//! written under an older version.
//!
//! | version | means |
//! |---|---|
//! | 1 | the payload is the producer's bytes (plain) |
//! | 2 | the payload may be sealed: when [`SEAL_KEY`] and [`SEAL_NONCE`] are present it is ciphertext (`libs/crypt`) |
//!
//! **Writing rule.** A writer stamps the *lowest* version that describes the envelope
//! ([`schema_for`]): 1 for a plain payload, 2 for a sealed one. A build that reads only version
//! 1 then keeps reading every plain message during a rolling upgrade, and refuses a sealed one
//! rather than delivering its ciphertext as the payload.
//!
//! **Reading rule.** A reader accepts [`MIN_SCHEMA_VERSION`]`..=`[`SCHEMA_VERSION`] and refuses
//! anything else with [`UnsupportedSchema`], which names the version found and the range read
//! ([`readable`]; [`crate::Envelope::from_headers`] calls it first).
//!
//! **Upgrade on replay.** [`upgrade`] walks [`STEPS`] from an entry's version to
//! [`SCHEMA_VERSION`], then stamps the lowest version that describes the result. A future
//! version adds one [`Step`] to [`STEPS`] (and a row to `docs/contracts.md`).

use async_nats::HeaderMap;

use crate::headers::{SCHEMA, SEAL_KEY, SEAL_NONCE};

/// The newest envelope schema version this build reads and writes.
pub const SCHEMA_VERSION: u16 = 2;

/// The oldest envelope schema version this build reads.
pub const MIN_SCHEMA_VERSION: u16 = 1;

/// Version 1: the payload is plain.
pub const PLAIN: u16 = 1;

/// Version 2: the payload may be sealed (it is, when it carries the seal headers).
pub const SEALED: u16 = 2;

/// The version a writer stamps on an envelope whose payload is sealed or plain: the lowest
/// version that describes it ([`PLAIN`] or [`SEALED`]).
pub fn schema_for(sealed: bool) -> u16 {
    if sealed { SEALED } else { PLAIN }
}

/// The first seal header `h` carries, if any: its payload is then ciphertext.
pub fn seal_header(h: &HeaderMap) -> Option<&'static str> {
    [SEAL_KEY, SEAL_NONCE]
        .into_iter()
        .find(|name| h.get(*name).is_some())
}

/// A `Switchyard-Schema` version outside the range this build reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "envelope schema version {found} is not one this build reads (it reads versions {min}..={max})",
    min = MIN_SCHEMA_VERSION,
    max = SCHEMA_VERSION
)]
pub struct UnsupportedSchema {
    /// The version the envelope carries.
    pub found: u16,
}

/// Checks that this build reads envelope schema version `found`.
///
/// # Errors
/// [`UnsupportedSchema`] naming `found` and the range read, when it is above [`SCHEMA_VERSION`]
/// or below [`MIN_SCHEMA_VERSION`].
pub fn readable(found: u16) -> Result<u16, UnsupportedSchema> {
    if (MIN_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&found) {
        Ok(found)
    } else {
        Err(UnsupportedSchema { found })
    }
}

/// Why an envelope's schema version cannot be upgraded to one this build writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The envelope has no `Switchyard-Schema` header (or no headers at all).
    #[error("missing header {header}", header = SCHEMA)]
    Missing,
    /// `Switchyard-Schema` is not a decimal version.
    #[error("header {header} has an invalid value {value:?}: not a decimal schema version", header = SCHEMA)]
    Invalid {
        /// The refused value (cut at 80 characters).
        value: String,
    },
    /// The version is outside the range this build reads.
    #[error(transparent)]
    Unsupported(#[from] UnsupportedSchema),
    /// The headers contradict the version: they carry what the version does not describe.
    #[error(
        "envelope schema version {version} does not describe header {header} (a sealed payload is version {sealed}): a reader of version {version} would take the ciphertext for the payload",
        sealed = SEALED
    )]
    Inconsistent {
        /// The version the envelope carries.
        version: u16,
        /// The header it should not carry.
        header: &'static str,
    },
}

/// One upgrade step: from version `from` to `from + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// The version the step reads.
    pub from: u16,
    /// The version its result is in (`from + 1`).
    pub to: u16,
    /// What the step does, for operators and `docs/contracts.md`.
    pub does: &'static str,
    /// Rewrites (or checks) the headers of an envelope in version `from` into version `to`.
    pub apply: fn(&mut HeaderMap) -> Result<(), SchemaError>,
}

/// The upgrade steps, in order: step `i` reads version [`MIN_SCHEMA_VERSION`]` + i`, the last
/// one's result is [`SCHEMA_VERSION`].
pub const STEPS: &[Step] = &[Step {
    from: 1,
    to: 2,
    does: "a version 1 envelope must not carry the seal headers (it would be ciphertext a version 1 reader delivers as the payload): refused as inconsistent if it does; otherwise unchanged (a plain payload means the same in version 2)",
    apply: plain_to_sealable,
}];

/// Step 1 → 2 ([`STEPS`]).
fn plain_to_sealable(h: &mut HeaderMap) -> Result<(), SchemaError> {
    match seal_header(h) {
        Some(header) => Err(SchemaError::Inconsistent {
            version: PLAIN,
            header,
        }),
        None => Ok(()),
    }
}

/// What [`upgrade`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The version the envelope carried.
    pub from: u16,
    /// The version it now carries: the lowest that describes it ([`schema_for`]).
    pub to: u16,
    /// The steps applied, by the version each read (empty for an envelope already at
    /// [`SCHEMA_VERSION`]).
    pub steps: Vec<u16>,
}

/// Brings the envelope headers `h` (a DLQ entry's, before it is replayed) to the version this
/// build would stamp on it: reads `Switchyard-Schema`, applies each [`STEPS`] entry from that
/// version up to [`SCHEMA_VERSION`], then writes the lowest version that describes the
/// result. On an error `h` is left as it was.
///
/// # Errors
/// [`SchemaError::Missing`] or [`SchemaError::Invalid`] for an absent or garbled header,
/// [`SchemaError::Unsupported`] (naming the version and the range read) for a version this
/// build does not read, and a step's refusal ([`SchemaError::Inconsistent`]).
pub fn upgrade(h: &mut HeaderMap) -> Result<Upgrade, SchemaError> {
    let raw = h.get(SCHEMA).ok_or(SchemaError::Missing)?.as_str();
    let from: u16 = raw.parse().map_err(|_| SchemaError::Invalid {
        value: raw.chars().take(80).collect(),
    })?;
    readable(from)?;
    let mut upgraded = h.clone();
    let mut steps = Vec::new();
    for step in STEPS.iter().filter(|step| step.from >= from) {
        (step.apply)(&mut upgraded)?;
        steps.push(step.from);
    }
    let to = schema_for(seal_header(&upgraded).is_some());
    upgraded.insert(SCHEMA, to.to_string());
    *h = upgraded;
    Ok(Upgrade { from, to, steps })
}

#[cfg(test)]
mod tests;
