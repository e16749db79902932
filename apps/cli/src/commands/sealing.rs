//! Route and destination secrets of tenants with encryption on, as the CLI writes them: sealed
//! under the tenant's current data key ([`SecretSealer`], labels in
//! `switchyard_crypt::route_secret`), which needs the key-encryption key (`--kek-file`); a
//! writer without it is refused rather than storing a secret in clear. [`seal_existing`] is
//! what `encryption enable` runs over the records written before.

use anyhow::Context;
use async_nats::jetstream;
use switchyard_crypt::{KekRing, KeyStore, SecretPlace, SecretSealer};
use switchyard_keys::{DestinationKey, KvKey, RouteKey, TenantId, kv::tenant_filter};
use switchyard_registry::{Changed, Destination, Route, Store};
use switchyard_topology::{BucketName, ResolvedTopology};

use crate::resources;

/// How many times sealing one record tries its compare-and-set.
const CAS_TRIES: usize = 5;

/// What `tenant`'s secrets are written with: clear (encryption off) or sealed under its current
/// data key, unwrapped with `ring`.
///
/// Errors: the tenant has encryption on and `ring` is `None` (the error names `--kek-file`),
/// its keys were shredded, its current key does not unwrap under `ring`, or the `tenant-keys`
/// bucket cannot be read.
pub(crate) async fn secret_sealer<'a>(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    tenant: &TenantId,
    ring: Option<&'a KekRing>,
) -> anyhow::Result<SecretSealer<'a>> {
    let keys = KeyStore::new(resources::bucket(js, topology, BucketName::TenantKeys).await?);
    Ok(keys.secret_sealer(tenant, ring).await?)
}

/// A stored record's target with its secrets opened, to keep or rotate them; `None` (with a
/// warning) when they do not open: the record is then replaced as if its secrets differed.
pub(crate) fn opened_old(
    sealer: &SecretSealer<'_>,
    old: Option<Route>,
    place: &SecretPlace,
) -> Option<Route> {
    let mut old = old?;
    match sealer.open(&mut old, place) {
        Ok(_) => Some(old),
        Err(error) => {
            anstream::eprintln!(
                "warning: the stored {}'s secrets do not open ({error}); its previous secrets \
                 are not kept",
                place.describe()
            );
            None
        }
    }
}

/// What [`seal_existing`] did.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct SealedRecords {
    /// Routes whose secrets were sealed now.
    pub routes: usize,
    /// Destinations whose secrets were sealed now.
    pub destinations: usize,
    /// Records left as they were, and why (unreadable, changing under concurrent writers).
    pub skipped: Vec<String>,
}

/// Seals every secret still in clear in `tenant`'s routes and destinations under its current
/// data key (`sealer` must be sealing), one compare-and-set per record; the key's history is
/// purged so the clear value does not linger. Idempotent: records already sealed are left.
///
/// Errors: a bucket cannot be opened or listed, or a write fails.
pub(crate) async fn seal_existing(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    tenant: &TenantId,
    sealer: &SecretSealer<'_>,
) -> anyhow::Result<SealedRecords> {
    let mut done = SealedRecords::default();
    let routes: Store<RouteKey, Route> =
        Store::new(resources::bucket(js, topology, BucketName::Routes).await?);
    for (key, record) in routes.list(&tenant_filter(tenant)).await? {
        let place = SecretPlace::Route(key.clone());
        if let Err(error) = record {
            done.skipped
                .push(format!("route {}: {error}", key.render()));
            continue;
        }
        let changed = routes
            .change(&key, CAS_TRIES, |stored| {
                let Some(route) = stored.filter(|r| switchyard_crypt::route_secret::has_clear(r))
                else {
                    return Ok(None);
                };
                let mut route = route.clone();
                sealer.seal(&mut route, &place)?;
                anyhow::Ok(Some(route))
            })
            .await;
        match changed {
            Ok(Changed::Stored(..)) => {
                routes.purge_history(&key).await?;
                done.routes += 1;
            }
            Ok(Changed::Unchanged(_)) => {}
            Ok(Changed::Conflicts) => done
                .skipped
                .push(format!("route {}: kept changing; run again", key.render())),
            Err(error) => done
                .skipped
                .push(format!("route {}: {error:#}", key.render())),
        }
    }
    let destinations: Store<DestinationKey, Destination> =
        Store::new(resources::bucket(js, topology, BucketName::Destinations).await?);
    for (key, record) in destinations.list(&tenant_filter(tenant)).await? {
        let place = SecretPlace::Destination(key.clone());
        if let Err(error) = record {
            done.skipped
                .push(format!("destination {}: {error}", key.render()));
            continue;
        }
        let changed = destinations
            .change(&key, CAS_TRIES, |stored| {
                let Some(found) =
                    stored.filter(|d| switchyard_crypt::route_secret::has_clear(&d.target))
                else {
                    return Ok(None);
                };
                let mut next = found.clone();
                sealer.seal(&mut next.target, &place)?;
                anyhow::Ok(Some(next))
            })
            .await;
        match changed {
            Ok(Changed::Stored(..)) => {
                destinations
                    .purge_history(&key)
                    .await
                    .context("purging the clear secret from the destination's history")?;
                done.destinations += 1;
            }
            Ok(Changed::Unchanged(_)) => {}
            Ok(Changed::Conflicts) => done.skipped.push(format!(
                "destination {}: kept changing; run again",
                key.render()
            )),
            Err(error) => done
                .skipped
                .push(format!("destination {}: {error:#}", key.render())),
        }
    }
    Ok(done)
}
