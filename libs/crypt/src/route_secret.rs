//! The secrets of route and destination records, sealed under the tenant's data keys: a
//! webhook's signing `secret`, each of its `previous_secrets`, and its Ed25519 `signing_key`.
//!
//! **Labels** (bound into each secret's associated data, [`SecretPlace::label`]):
//! `route/<tenant>.<team or _>.<platform>/webhook` and `…/signing_key` for a route,
//! `destination/<tenant>.<destination>/webhook` and `…/signing_key` for a destination. A
//! sealed secret copied into another route, destination, tenant or field does not open. The
//! current and previous secrets share the `webhook` label, so a rotation may move the current
//! one into `previous_secrets` as it is (writers re-seal every secret anyway: [`SecretSealer`]).
//!
//! Writers (the CLI, the management API) hold a [`SecretSealer`]
//! ([`crate::KeyStore::secret_sealer`]): it opens what a stored record holds, and seals every
//! secret of a record about to be written under the tenant's *current* data key, after checking
//! the plaintext (`whsec_` and its length, a valid Ed25519 key). Egress opens them with its
//! [`crate::KeyCache::open_secrets`].

use std::collections::BTreeSet;

use switchyard_keys::{DestinationKey, KvKey, RouteKey, TenantId};
use switchyard_registry::{Route, WebhookSecret};

use crate::dek::DataKey;
use crate::error::CryptError;
use crate::id::DekId;
use crate::kek::KekRing;
use crate::record::TenantKeys;
use crate::secret::SealedSecret;

/// The record a secret belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretPlace {
    /// A route (its key in the `routes` bucket).
    Route(RouteKey),
    /// A destination (its key in the `destinations` bucket).
    Destination(DestinationKey),
}

/// Which secret field of a webhook target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretField {
    /// The signing secret and the previous ones still signing (`whsec_…`).
    Webhook,
    /// The Ed25519 private key (`whsk_…`).
    SigningKey,
}

impl SecretField {
    /// `webhook` or `signing_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretField::Webhook => "webhook",
            SecretField::SigningKey => "signing_key",
        }
    }
}

impl SecretPlace {
    /// The tenant whose keys seal it.
    pub fn tenant(&self) -> &TenantId {
        match self {
            SecretPlace::Route(key) => &key.tenant,
            SecretPlace::Destination(key) => &key.tenant,
        }
    }

    /// The label bound into a secret of `field` here: `route/<route key>/<field>` or
    /// `destination/<destination key>/<field>`.
    pub fn label(&self, field: SecretField) -> String {
        match self {
            SecretPlace::Route(key) => format!("route/{}/{}", key.render(), field.as_str()),
            SecretPlace::Destination(key) => {
                format!("destination/{}/{}", key.render(), field.as_str())
            }
        }
    }

    /// `route <key>` or `destination <key>`, for messages.
    pub fn describe(&self) -> String {
        match self {
            SecretPlace::Route(key) => format!("route {}", key.render()),
            SecretPlace::Destination(key) => format!("destination {}", key.render()),
        }
    }
}

/// Every secret field of `route` with its field kind (none for a NATS route).
fn fields_mut(route: &mut Route) -> Vec<(SecretField, &mut String)> {
    let Route::Webhook(w) = route else {
        return Vec::new();
    };
    let mut fields = vec![(SecretField::Webhook, &mut w.secret.0)];
    for previous in &mut w.previous_secrets {
        fields.push((SecretField::Webhook, &mut previous.secret.0));
    }
    if let Some(key) = &mut w.signing_key {
        fields.push((SecretField::SigningKey, &mut key.0));
    }
    fields
}

/// Every secret field's value.
fn values(route: &Route) -> Vec<&str> {
    let Route::Webhook(w) = route else {
        return Vec::new();
    };
    let mut values = vec![w.secret.0.as_str()];
    values.extend(w.previous_secrets.iter().map(|p| p.secret.0.as_str()));
    values.extend(w.signing_key.iter().map(|k| k.0.as_str()));
    values
}

/// Whether any secret of `route` is sealed.
pub fn has_sealed(route: &Route) -> bool {
    values(route).into_iter().any(SealedSecret::is_sealed)
}

/// Whether any secret of `route` is in clear.
pub fn has_clear(route: &Route) -> bool {
    values(route)
        .into_iter()
        .any(|v| !SealedSecret::is_sealed(v))
}

/// The data keys `route`'s sealed secrets name.
///
/// # Errors
/// [`CryptError::BadSecret`] for a sealed value that does not parse.
pub fn sealed_key_ids(route: &Route) -> Result<BTreeSet<DekId>, CryptError> {
    values(route)
        .into_iter()
        .filter(|v| SealedSecret::is_sealed(v))
        .map(|v| v.parse::<SealedSecret>().map(|s| s.key().clone()))
        .collect()
}

/// Opens every sealed secret of `route` (found at `place`) in place, with the data key
/// `key_for` gives for its id; clear ones stay. Returns how many were opened.
///
/// # Errors
/// `key_for`'s own; [`CryptError::BadSecret`] for a malformed sealed value;
/// [`CryptError::Tampered`] for one sealed elsewhere (another record, tenant or field) or
/// changed.
pub fn open_secrets<E: From<CryptError>>(
    route: &mut Route,
    place: &SecretPlace,
    mut key_for: impl FnMut(&DekId) -> Result<std::sync::Arc<DataKey>, E>,
) -> Result<usize, E> {
    let mut opened = 0;
    for (field, value) in fields_mut(route) {
        if !SealedSecret::is_sealed(value) {
            continue;
        }
        let sealed: SealedSecret = value.parse()?;
        let key = key_for(sealed.key())?;
        let plain = sealed.open(&key, place.tenant(), &place.label(field))?;
        *value = plain.as_str().to_owned();
        opened += 1;
    }
    Ok(opened)
}

/// Checks a clear secret before it is sealed: a `whsec_` secret of at least 16 bytes, or an
/// Ed25519 key pair. The reason never holds the secret.
fn check_plain(field: SecretField, value: &str) -> Result<(), CryptError> {
    let checked = match field {
        SecretField::Webhook => WebhookSecret(value.to_owned()).key().map(|_| ()),
        SecretField::SigningKey => switchyard_registry::SigningKey(value.to_owned())
            .key_pair()
            .map(|_| ()),
    };
    checked.map_err(|e| CryptError::InvalidSecret {
        reason: e.to_string(),
    })
}

/// Seals every clear secret of `route` (found at `place`) under `key`, each checked first.
/// Returns how many were sealed.
///
/// # Errors
/// [`CryptError::InvalidSecret`] naming the field of an invalid secret, or one already sealed
/// (open it first); [`CryptError::Random`].
pub fn seal_secrets(
    route: &mut Route,
    place: &SecretPlace,
    key: &DataKey,
) -> Result<usize, CryptError> {
    let mut sealed = 0;
    for (field, value) in fields_mut(route) {
        if SealedSecret::is_sealed(value) {
            return Err(CryptError::InvalidSecret {
                reason: format!(
                    "{} of {} is sealed already: open it before sealing again",
                    field.as_str(),
                    place.describe()
                ),
            });
        }
        check_plain(field, value)?;
        *value = SealedSecret::seal(key, place.tenant(), &place.label(field), value)?.to_string();
        sealed += 1;
    }
    Ok(sealed)
}

/// What a writer of route and destination records holds for one tenant
/// ([`crate::KeyStore::secret_sealer`]): whether its secrets are stored sealed, and the keys to
/// do it.
pub enum SecretSealer<'a> {
    /// The tenant has encryption off: its secrets are stored in clear.
    Clear(TenantId),
    /// The tenant has encryption on: its secrets are stored sealed under its current data key.
    Sealing {
        /// The tenant's key record.
        record: Box<TenantKeys>,
        /// The KEKs that unwrap its data keys.
        ring: &'a KekRing,
        /// Its current data key, unwrapped.
        current: std::sync::Arc<DataKey>,
    },
}

impl SecretSealer<'_> {
    /// Whether secrets are sealed for this tenant.
    pub fn is_sealing(&self) -> bool {
        matches!(self, SecretSealer::Sealing { .. })
    }

    /// Opens the secrets of a stored `route` at `place`, to change it (keep or rotate its
    /// secrets). Returns how many were opened.
    ///
    /// # Errors
    /// [`CryptError::InvalidSecret`] when the record holds sealed secrets but the tenant has
    /// encryption off; as [`open_secrets`], and [`CryptError::UnknownKey`] or a KEK error when
    /// a data key does not unwrap.
    pub fn open(&self, route: &mut Route, place: &SecretPlace) -> Result<usize, CryptError> {
        match self {
            SecretSealer::Clear(tenant) => {
                if has_sealed(route) {
                    return Err(CryptError::InvalidSecret {
                        reason: format!(
                            "{} holds sealed secrets, but tenant {tenant} has encryption off: \
                             set its secrets again",
                            place.describe()
                        ),
                    });
                }
                Ok(0)
            }
            SecretSealer::Sealing { record, ring, .. } => open_secrets(route, place, |id| {
                record.key(id, ring).map(std::sync::Arc::new)
            }),
        }
    }

    /// Makes `route` (about to be written at `place`) ready to store: for a tenant with
    /// encryption on, every secret sealed under its current data key (sealed ones are opened
    /// and sealed again, so a record always ends up under the current key and a sealed value
    /// copied from elsewhere is refused); for one without, unchanged (a sealed value is
    /// refused). Returns how many secrets were sealed.
    ///
    /// # Errors
    /// As [`SecretSealer::open`] and [`seal_secrets`].
    pub fn seal(&self, route: &mut Route, place: &SecretPlace) -> Result<usize, CryptError> {
        self.open(route, place)?;
        match self {
            SecretSealer::Clear(_) => Ok(0),
            SecretSealer::Sealing { current, .. } => seal_secrets(route, place, current),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dek::Dek;
    use std::sync::Arc;
    use switchyard_keys::{DestinationId, PlatformId, RouteTeam};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OLD: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SIGNING: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn key(id: &str) -> Arc<DataKey> {
        Arc::new(DataKey::new(
            DekId::new(id).unwrap(),
            Dek::generate().unwrap(),
        ))
    }

    fn route_place(tenant: &str, platform: &str) -> SecretPlace {
        SecretPlace::Route(RouteKey {
            tenant: TenantId::new(tenant).unwrap(),
            team: RouteTeam::Any,
            platform: PlatformId::new(platform).unwrap(),
        })
    }

    fn webhook() -> Route {
        Route::from_json(
            format!(
                r#"{{"type":"webhook","url":"http://127.0.0.1:9/h","secret":"{SECRET}",
                "signing_key":"{SIGNING}",
                "previous_secrets":[{{"secret":"{OLD}","expires_at":"2030-01-01T00:00:00Z"}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn every_secret_field_is_sealed_and_opens_back_at_its_own_place_only() {
        let place = route_place("acme", "shop");
        assert_eq!(
            place.label(SecretField::Webhook),
            "route/acme._.shop/webhook"
        );
        let k = key("d1");
        let mut route = webhook();
        assert_eq!(seal_secrets(&mut route, &place, &k).unwrap(), 3);
        let json = String::from_utf8(route.to_json()).unwrap();
        for secret in [SECRET, OLD, SIGNING] {
            assert!(!json.contains(secret), "{json}");
        }
        // The stored record still parses and validates.
        let stored = Route::from_json(json.as_bytes()).unwrap();
        assert!(has_sealed(&stored) && !has_clear(&stored));
        assert_eq!(
            sealed_key_ids(&stored).unwrap(),
            BTreeSet::from([DekId::new("d1").unwrap()])
        );
        let by_id = |id: &DekId| -> Result<Arc<DataKey>, CryptError> {
            assert_eq!(id.as_str(), "d1");
            Ok(k.clone())
        };
        let mut opened = stored.clone();
        assert_eq!(open_secrets(&mut opened, &place, by_id).unwrap(), 3);
        assert_eq!(opened, webhook());

        // The same record at another route, another tenant's route, or as a destination.
        let elsewhere = [
            route_place("acme", "billing"),
            route_place("globex", "shop"),
            SecretPlace::Destination(DestinationKey {
                tenant: TenantId::new("acme").unwrap(),
                destination: DestinationId::new("shop").unwrap(),
            }),
        ];
        for other in elsewhere {
            let mut moved = stored.clone();
            let err = open_secrets(&mut moved, &other, by_id).unwrap_err();
            assert!(
                matches!(err, CryptError::Tampered { what: "secret", .. }),
                "{err}"
            );
        }
        // The webhook secret moved into the signing key's field.
        let Route::Webhook(mut w) = stored.clone() else {
            unreachable!()
        };
        w.signing_key = Some(switchyard_registry::SigningKey(w.secret.0.clone()));
        let err = open_secrets(&mut Route::Webhook(w), &place, by_id).unwrap_err();
        assert!(matches!(err, CryptError::Tampered { .. }), "{err}");
    }

    #[test]
    fn invalid_or_already_sealed_secrets_are_refused_before_sealing() {
        let place = route_place("acme", "shop");
        let k = key("d1");
        let Route::Webhook(mut w) = webhook() else {
            unreachable!()
        };
        w.secret = WebhookSecret("whsec_YWJj".into());
        let err = seal_secrets(&mut Route::Webhook(w), &place, &k).unwrap_err();
        assert!(err.to_string().contains("shorter than 16 bytes"), "{err}");
        let mut route = webhook();
        seal_secrets(&mut route, &place, &k).unwrap();
        let err = seal_secrets(&mut route, &place, &k).unwrap_err();
        assert!(err.to_string().contains("sealed already"), "{err}");
    }
}
