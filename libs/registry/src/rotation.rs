//! Webhook signing-secret rotation with an overlap window, in the Standard Webhooks way
//! (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>,
//! "Signature scheme": the `webhook-signature` header holds space-separated signatures, and a
//! receiver accepts a message when one of them verifies).
//!
//! After a rotation the route's new secret signs every delivery, and each previous secret keeps
//! signing it too until its `expires_at`: a receiver still holding the old secret and one
//! already holding the new one both verify every delivery during the overlap. Expired secrets
//! sign nothing and are dropped at the next rotation.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::route::{RouteError, WebhookRoute, WebhookSecret};

/// The longest overlap a rotation may give the old secret: 30 days (receivers get a month to
/// switch; a longer one would keep a possibly compromised secret signing indefinitely).
pub const MAX_OVERLAP: time::Duration = time::Duration::days(30);

/// At most this many previous secrets per route (each adds one HMAC per delivery and ~50 bytes
/// to the `webhook-signature` header).
pub const MAX_PREVIOUS_SECRETS: usize = 4;

/// A previous signing secret, still signing every delivery until `expires_at`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiringSecret {
    /// The secret (`whsec_…`).
    pub secret: WebhookSecret,
    /// When it stops signing (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for RetiringSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetiringSecret")
            .field("secret", &self.secret)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl WebhookRoute {
    /// The keys a delivery made at `now` is signed with: the current secret's first, then each
    /// previous secret's that has not expired.
    ///
    /// # Errors
    /// [`RouteError::Field`] when a secret is not a valid `whsec_` secret.
    pub fn signing_keys(&self, now: OffsetDateTime) -> Result<Vec<Vec<u8>>, RouteError> {
        let mut keys = vec![self.secret.key()?];
        for previous in self.previous_secrets.iter().filter(|p| p.expires_at > now) {
            keys.push(previous.secret.key()?);
        }
        Ok(keys)
    }

    /// Rotates to `new`: the current secret keeps signing until `now + overlap` (not at all
    /// with a zero overlap), previous secrets that have expired are dropped.
    ///
    /// # Errors
    /// [`RouteError::Field`] when `new` is not a valid secret, is the current secret or a
    /// previous one (rotating to it would not change what receivers need), when `overlap` is
    /// negative or over [`MAX_OVERLAP`], or when more than [`MAX_PREVIOUS_SECRETS`] would
    /// still be signing.
    pub fn rotate(
        &mut self,
        new: WebhookSecret,
        overlap: time::Duration,
        now: OffsetDateTime,
    ) -> Result<(), RouteError> {
        new.key()?;
        if overlap < time::Duration::ZERO || overlap > MAX_OVERLAP {
            return Err(RouteError::Field {
                field: "previous_secrets",
                reason: format!(
                    "an overlap of {overlap} is outside 0 s to {MAX_OVERLAP} (30 days)"
                ),
            });
        }
        let reused = std::iter::once(&self.secret)
            .chain(self.previous_secrets.iter().map(|p| &p.secret))
            .any(|s| *s == new);
        if reused {
            return Err(RouteError::Field {
                field: "secret",
                reason: "the new secret is the current one or a previous one: rotate to a \
                         fresh secret"
                    .into(),
            });
        }
        // Nothing changes unless every check passes.
        let mut previous: Vec<RetiringSecret> = self
            .previous_secrets
            .iter()
            .filter(|p| p.expires_at > now)
            .cloned()
            .collect();
        if overlap > time::Duration::ZERO {
            previous.push(RetiringSecret {
                secret: self.secret.clone(),
                expires_at: now + overlap,
            });
        }
        if previous.len() > MAX_PREVIOUS_SECRETS {
            return Err(RouteError::Field {
                field: "previous_secrets",
                reason: format!(
                    "{} previous secrets would still be signing (at most {MAX_PREVIOUS_SECRETS}): \
                     wait until one expires, or rotate with a shorter overlap",
                    previous.len()
                ),
            });
        }
        self.secret = new;
        self.previous_secrets = previous;
        Ok(())
    }

    /// Stops every previous secret at once (a compromised one, an overlap that is no longer
    /// needed): from now on only the current secret signs. Returns how many were dropped.
    pub fn revoke_previous(&mut self) -> usize {
        std::mem::take(&mut self.previous_secrets).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Route;

    const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const NEW: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    fn route() -> WebhookRoute {
        match Route::from_json(
            format!(r#"{{"type":"webhook","url":"http://127.0.0.1:9/h","secret":"{OLD}"}}"#)
                .as_bytes(),
        )
        .unwrap()
        {
            Route::Webhook(w) => w,
            Route::Nats(_) => unreachable!("a webhook route"),
        }
    }

    #[test]
    fn during_the_overlap_both_secrets_sign_and_after_it_only_the_new_one() {
        let now = OffsetDateTime::now_utc();
        let mut w = route();
        let old_key = w.secret.key().unwrap();
        w.rotate(WebhookSecret(NEW.into()), time::Duration::hours(1), now)
            .unwrap();
        let new_key = w.secret.key().unwrap();
        assert_eq!(w.signing_keys(now).unwrap(), vec![new_key.clone(), old_key]);
        assert_eq!(
            w.signing_keys(now + time::Duration::hours(2)).unwrap(),
            vec![new_key]
        );
        // The record round-trips, previous secrets included.
        let json = serde_json::to_string(&Route::Webhook(w.clone())).unwrap();
        assert!(json.contains("previous_secrets"), "{json}");
        assert_eq!(
            Route::from_json(json.as_bytes()).unwrap(),
            Route::Webhook(w)
        );
    }

    #[test]
    fn a_zero_overlap_replaces_at_once_and_reuse_or_too_many_are_refused() {
        let now = OffsetDateTime::now_utc();
        let mut w = route();
        w.rotate(WebhookSecret(NEW.into()), time::Duration::ZERO, now)
            .unwrap();
        assert!(w.previous_secrets.is_empty());
        assert_eq!(w.signing_keys(now).unwrap().len(), 1);
        let err = w
            .rotate(WebhookSecret(NEW.into()), time::Duration::hours(1), now)
            .unwrap_err();
        assert!(
            err.to_string().contains("current one or a previous one"),
            "{err}"
        );
        let err = w
            .rotate(
                WebhookSecret("whsec_!!".into()),
                time::Duration::hours(1),
                now,
            )
            .unwrap_err();
        assert!(err.to_string().contains("route field secret"), "{err}");

        let fresh = |n: u8| {
            WebhookSecret(format!(
                "whsec_{}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [n; 24])
            ))
        };
        for n in 0..MAX_PREVIOUS_SECRETS as u8 {
            w.rotate(fresh(n), time::Duration::hours(1), now).unwrap();
        }
        let err = w
            .rotate(fresh(99), time::Duration::hours(1), now)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("previous secrets would still be signing"),
            "{err}"
        );
        // Once they have expired, rotating drops them.
        let later = now + time::Duration::hours(2);
        w.rotate(fresh(99), time::Duration::hours(1), later)
            .unwrap();
        assert_eq!(w.previous_secrets.len(), 1);
    }

    #[test]
    fn an_overlap_is_bounded_and_previous_secrets_can_be_revoked() {
        let now = OffsetDateTime::now_utc();
        let mut w = route();
        for bad in [
            MAX_OVERLAP + time::Duration::SECOND,
            -time::Duration::SECOND,
        ] {
            let err = w.rotate(WebhookSecret(NEW.into()), bad, now).unwrap_err();
            assert!(err.to_string().contains("outside 0 s"), "{err}");
        }
        w.rotate(WebhookSecret(NEW.into()), MAX_OVERLAP, now)
            .unwrap();
        assert_eq!(w.revoke_previous(), 1);
        assert_eq!(w.signing_keys(now).unwrap().len(), 1);
    }

    #[test]
    fn redaction_hides_previous_secrets_too() {
        let now = OffsetDateTime::now_utc();
        let mut w = route();
        w.rotate(WebhookSecret(NEW.into()), time::Duration::hours(1), now)
            .unwrap();
        let shown = serde_json::to_string(&Route::Webhook(w.clone()).redacted()).unwrap();
        assert!(!shown.contains(OLD) && !shown.contains(NEW), "{shown}");
        assert!(shown.contains("expires_at"), "{shown}");
        let debug = format!("{w:?}");
        assert!(!debug.contains(OLD) && !debug.contains(NEW), "{debug}");
    }
}
