//! `switchyard publish`: publish a test message to a tenant's ingress subject through
//! JetStream, with the producer's `Nats-Msg-Id`, and report where the stream stored it (or
//! that its duplicate window dropped it).

use anstream::println;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;
use clap::ArgGroup;
use serde::Serialize;
use switchyard_envelope::headers;
use switchyard_keys::{Address, MsgId, PlatformId, TeamId, TenantId};
use switchyard_subjects::{InputStage, StageSubject, SubjectKind};
use switchyard_topology::ResolvedTopology;

use crate::output::Output;
use crate::parse;

/// Arguments of `publish`.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("body").args(["data", "file"])))]
pub struct PublishArgs {
    /// Tenant id.
    pub tenant: TenantId,
    /// Team id.
    pub team: TeamId,
    /// Platform id.
    pub platform: PlatformId,
    /// The producer's message id (`Nats-Msg-Id`, its idempotency key); a new UUIDv7 when absent.
    #[arg(long, value_name = "MSG_ID")]
    pub id: Option<String>,
    /// A message header, `K=V` (repeatable). `Nats-*` headers are refused: use --id.
    #[arg(long = "header", value_name = "K=V", value_parser = parse::key_value)]
    pub headers: Vec<(String, String)>,
    /// The payload's media type (`Content-Type`).
    #[arg(long, value_name = "CT")]
    pub content_type: Option<String>,
    /// The payload as text.
    #[arg(long, value_name = "TEXT")]
    pub data: Option<String>,
    /// Read the payload from a file (stdin is read when neither --data nor --file is given).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

/// What `publish --json` prints.
#[derive(Debug, Serialize)]
pub struct PublishReport {
    /// The ingress subject.
    pub subject: String,
    /// The `Nats-Msg-Id` sent.
    pub msg_id: String,
    /// Whether the CLI generated the id.
    pub msg_id_generated: bool,
    /// The stream that acknowledged.
    pub stream: String,
    /// The stored sequence (of the original, when `duplicate`).
    pub seq: u64,
    /// Whether the stream dropped the message as a duplicate.
    pub duplicate: bool,
}

fn message_headers(args: &PublishArgs, msg_id: &MsgId) -> anyhow::Result<HeaderMap> {
    let mut h = HeaderMap::new();
    for (name, value) in &args.headers {
        let parsed = HeaderName::from_str(name)
            .map_err(|e| anyhow::anyhow!("--header {name:?}: invalid header name: {e}"))?;
        if name.len() >= headers::SERVER_PREFIX.len()
            && name[..headers::SERVER_PREFIX.len()].eq_ignore_ascii_case(headers::SERVER_PREFIX)
        {
            anyhow::bail!(
                "--header {name:?}: Nats-* headers are interpreted by the server; set the message id with --id"
            );
        }
        if value.contains(['\r', '\n']) {
            anyhow::bail!("--header {name:?}: a header value cannot contain a line break");
        }
        h.append(parsed, value.as_str());
    }
    if let Some(ct) = &args.content_type {
        h.insert(headers::CONTENT_TYPE, ct.as_str());
    }
    h.insert(headers::NATS_MSG_ID, msg_id.as_str());
    Ok(h)
}

fn payload(args: &PublishArgs) -> anyhow::Result<Bytes> {
    if let Some(data) = &args.data {
        return Ok(Bytes::from(data.clone()));
    }
    if let Some(path) = &args.file {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(bytes.into());
    }
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("reading the payload from stdin (end with Ctrl-D)");
    }
    let mut bytes = Vec::new();
    stdin
        .read_to_end(&mut bytes)
        .context("reading the payload from stdin")?;
    Ok(bytes.into())
}

/// Runs `publish`.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &PublishArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let generated = args.id.is_none();
    let raw_id = args
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let msg_id = MsgId::new(raw_id).context("--id")?;
    let headers = message_headers(args, &msg_id)?;
    let payload = payload(args)?;
    let subject = StageSubject {
        stage: InputStage::Ingress,
        address: Address::new(
            args.tenant.clone(),
            args.team.clone(),
            args.platform.clone(),
        ),
    }
    .format(&topology.namespace);
    let not_provisioned = |kind: &PublishErrorKind| {
        if *kind == PublishErrorKind::StreamNotFound {
            // Each tenant's ingress stream is created by `tenants enable` (and `provision`
            // creates the shared items and every registered tenant's stream).
            format!(
                "no stream stores {subject}: tenant {tenant} has no ingress stream; enable it \
                 with `switchyard tenants enable {tenant}` (on a new server, run `switchyard \
                 provision` first)",
                tenant = args.tenant
            )
        } else {
            format!("publishing to {subject}")
        }
    };
    let ack = js
        .publish_with_headers(subject.clone(), headers, payload)
        .await
        .map_err(|e| {
            let context = not_provisioned(&e.kind());
            anyhow::Error::new(e).context(context)
        })?
        .await
        .map_err(|e| {
            let context = not_provisioned(&e.kind());
            anyhow::Error::new(e).context(context)
        })?;
    let report = PublishReport {
        subject,
        msg_id: msg_id.as_str().to_owned(),
        msg_id_generated: generated,
        stream: ack.stream,
        seq: ack.sequence,
        duplicate: ack.duplicate,
    };
    if out.is_json() {
        out.json(&report)?;
    } else {
        if generated {
            println!("msg id {} (generated)", report.msg_id);
        }
        if report.duplicate {
            println!(
                "duplicate of seq {} (dropped by the stream's duplicate window)",
                report.seq
            );
        } else {
            println!("stored in {} seq {}", report.stream, report.seq);
        }
    }
    Ok(ExitCode::SUCCESS)
}
