//! `switchyard dlq show <seq>`: one entry in full, read with a direct get (the stream has
//! `allow_direct`): the record, the original headers, the payload (pretty-printed when it is
//! JSON) and the attempt history.
//!
//! An encrypted payload (a tenant with encryption on: `Switchyard-Key` among the original
//! headers) stays encrypted in the DLQ. With the key-encryption key (`--kek-file` or
//! `SWITCHYARD_KEK_FILE`) it is decrypted for display; without it, or when it cannot be
//! decrypted (the tenant was shredded, the payload tampered with), it shows as `encrypted (key
//! <id>)` and the reason. `--json` adds `"encryption": {"key", "decrypted", "error"?}` and shows
//! the plaintext as `payload` when decrypted.

use anstream::print;
use std::collections::BTreeMap;
use std::process::ExitCode;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use serde_json::json;
use switchyard_crypt::{KeyStore, OpenError, Opened, edge_seal_id, seal_headers};
use switchyard_dlq::DlqEntry;
use switchyard_dlq_ops::DlqReader;
use switchyard_envelope::{PayloadView, headers as env_headers};
use switchyard_topology::{BucketName, ResolvedTopology};

use crate::commands::encryption::KekArgs;
use crate::output::{Output, Table, fields, printable, printable_text};
use crate::parse::show_time;
use crate::resources;

/// Arguments of `dlq show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The entry's DLQ stream sequence (from `dlq ls` or `dlq tail`).
    pub seq: u64,
    /// The key-encryption key, to decrypt an encrypted payload.
    #[command(flatten)]
    pub kek: KekArgs,
}

/// What became of an entry's encrypted payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealed {
    /// The payload was not encrypted.
    No,
    /// Decrypted with the KEK: the data key's id and the plaintext.
    Decrypted {
        /// The data key id.
        key: String,
        /// The plaintext.
        plaintext: Bytes,
    },
    /// Encrypted and not decrypted: the data key's id (`?` when its header is malformed) and
    /// why (no KEK given, the tenant shredded, tampered with, …).
    Encrypted {
        /// The data key id.
        key: String,
        /// Why it is shown encrypted.
        reason: String,
    },
}

/// Decrypts `entry`'s payload when it is encrypted and `store` and a KEK ring are given. The
/// payload is bound to its envelope id (`Switchyard-Id`), or, for one sealed at the edge and
/// dead-lettered before ingress stamped it, to its producer message id.
pub async fn unseal(
    entry: &DlqEntry,
    keys: Option<(&KeyStore, &switchyard_crypt::KekRing)>,
) -> Sealed {
    let headers = Some(&entry.original_headers);
    let seal = match seal_headers(headers) {
        Ok(None) => return Sealed::No,
        Ok(Some(seal)) => seal,
        Err(error) => {
            return Sealed::Encrypted {
                key: "?".into(),
                reason: error.to_string(),
            };
        }
    };
    let key = seal.key.to_string();
    let Some((store, ring)) = keys else {
        return Sealed::Encrypted {
            key,
            reason: "pass --kek-file (or set SWITCHYARD_KEK_FILE) to decrypt".into(),
        };
    };
    let Some(tenant) = &entry.record.tenant else {
        return Sealed::Encrypted {
            key,
            reason: "the entry names no tenant".into(),
        };
    };
    let aad_id = match entry.original_headers.get(env_headers::ID) {
        Some(id) => id.as_str().to_owned(),
        None => edge_seal_id(entry.original_msg_id.as_deref().unwrap_or_default()),
    };
    match store
        .open(ring, tenant, &aad_id, headers, &entry.payload)
        .await
    {
        Ok(Opened::Decrypted { payload, .. }) => Sealed::Decrypted {
            key,
            plaintext: payload,
        },
        Ok(Opened::Plain(_)) => Sealed::No,
        Err(error) => Sealed::Encrypted {
            key,
            reason: match &error {
                OpenError::Unavailable(reason) => format!("cannot decrypt now: {reason}"),
                other => other.to_string(),
            },
        },
    }
}

/// Headers as `Name: value` lines, sorted by name.
fn header_lines(headers: &HeaderMap) -> String {
    let mut sorted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        sorted
            .entry(name.to_owned())
            .or_default()
            .extend(values.iter().map(|v| v.as_str().to_owned()));
    }
    if sorted.is_empty() {
        return "  (none)\n".to_owned();
    }
    let mut out = String::new();
    for (name, values) in sorted {
        for value in values {
            out.push_str(&format!(
                "  {}: {}\n",
                printable(&name),
                printable(value.as_str())
            ));
        }
    }
    out
}

/// The payload for people: pretty JSON when it parses as JSON, text as is, else base64.
pub fn payload_text(payload: &[u8]) -> String {
    let view = PayloadView::of(payload);
    let body = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(view.data);
    format!(
        "payload ({}, {} bytes)\n{}\n",
        view.encoding,
        view.bytes,
        printable_text(&body)
    )
}

/// Renders an entry in full, its payload as `sealed` says.
pub fn render(entry: &DlqEntry, sealed: &Sealed) -> String {
    let r = &entry.record;
    let mut pairs = vec![
        ("seq", entry.seq.to_string()),
        ("stored", show_time(entry.stored_at)),
        ("subject", entry.subject.clone()),
        (
            "tenant",
            r.tenant
                .as_ref()
                .map_or("_ (unknown)".into(), ToString::to_string),
        ),
        ("stage", r.stage.to_string()),
        (
            "platform",
            r.platform
                .as_ref()
                .map_or("_ (unknown)".into(), ToString::to_string),
        ),
        ("code", r.code.to_string()),
        ("reason", r.reason.clone()),
        ("attempts", r.attempts.to_string()),
        ("first failure", show_time(r.first_failure)),
        ("last failure", show_time(r.last_failure)),
        (
            "source",
            format!(
                "{} seq {} ({})",
                r.source_stream, r.source_seq, r.source_subject
            ),
        ),
    ];
    if let Some(id) = &entry.original_msg_id {
        pairs.push(("original msg id", id.clone()));
    }
    let mut out = fields(&pairs);
    out.push_str("\nheaders\n");
    out.push_str(&header_lines(&entry.original_headers));
    out.push('\n');
    match sealed {
        Sealed::No => out.push_str(&payload_text(&entry.payload)),
        Sealed::Decrypted { key, plaintext } => {
            out.push_str(&format!("decrypted (key {key})\n"));
            out.push_str(&payload_text(plaintext));
        }
        Sealed::Encrypted { key, reason } => out.push_str(&format!(
            "payload: encrypted (key {key}), {} bytes\n  {}\n",
            entry.payload.len(),
            printable(reason)
        )),
    }
    out.push('\n');
    if r.history.is_empty() {
        out.push_str("attempt history: none\n");
    } else {
        out.push_str("attempt history\n");
        let mut table = Table::new(["AT", "OUTCOME", "STATUS", "DURATION", "ERROR"]);
        for a in &r.history {
            table.row([
                show_time(a.at),
                a.outcome.clone(),
                a.status.map_or("-".into(), |s| s.to_string()),
                format!("{} ms", a.duration_ms),
                a.error.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&table.render());
    }
    out
}

/// The JSON view of an entry: the record's view, with `"encryption"` for an encrypted
/// payload and the plaintext as `payload` once decrypted.
pub fn json_view(entry: &DlqEntry, sealed: &Sealed) -> anyhow::Result<serde_json::Value> {
    let mut view = serde_json::to_value(entry.view())?;
    let encryption = match sealed {
        Sealed::No => return Ok(view),
        Sealed::Decrypted { key, plaintext } => {
            view["payload"] = serde_json::to_value(PayloadView::of(plaintext))?;
            json!({"key": key, "decrypted": true})
        }
        Sealed::Encrypted { key, reason } => {
            json!({"key": key, "decrypted": false, "error": reason})
        }
    };
    view["encryption"] = encryption;
    Ok(view)
}

/// Runs `dlq show`.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    reader: &DlqReader,
    args: &ShowArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let ring = args.kek.ring()?;
    let Some(message) = reader.get(args.seq).await? else {
        anyhow::bail!("no DLQ entry with seq {}", args.seq);
    };
    match reader.entry_of(&message) {
        Ok(entry) => {
            let store = match (&ring, seal_headers(Some(&entry.original_headers))) {
                (Some(_), Ok(Some(_))) => Some(KeyStore::new(
                    resources::bucket(js, topology, BucketName::TenantKeys).await?,
                )),
                _ => None,
            };
            let keys = store.as_ref().zip(ring.as_ref());
            let sealed = unseal(&entry, keys).await;
            if out.is_json() && sealed == Sealed::No {
                out.json(&entry.view())?;
            } else if out.is_json() {
                out.json(&json_view(&entry, &sealed)?)?;
            } else {
                print!("{}", render(&entry, &sealed));
            }
        }
        Err(err) => {
            // Still show what is stored: an operator needs to see a broken entry to purge it.
            eprintln!(
                "warning: entry {} is not a valid DLQ record: {err:#}",
                args.seq
            );
            if out.is_json() {
                let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (name, values) in message.headers.iter() {
                    let name: &str = name.as_ref();
                    headers
                        .entry(name.to_owned())
                        .or_default()
                        .extend(values.iter().map(|v| v.as_str().to_owned()));
                }
                out.json(&json!({
                    "seq": message.sequence,
                    "stored_at": show_time(message.time),
                    "subject": message.subject.as_str(),
                    "error": format!("{err:#}"),
                    "headers": headers,
                    "payload": PayloadView::of(&message.payload),
                }))?;
            } else {
                let pairs = [
                    ("seq", message.sequence.to_string()),
                    ("stored", show_time(message.time)),
                    ("subject", message.subject.to_string()),
                    ("error", format!("{err:#}")),
                ];
                print!(
                    "{}\nheaders\n{}\n{}",
                    fields(&pairs),
                    header_lines(&message.headers),
                    payload_text(&message.payload)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
