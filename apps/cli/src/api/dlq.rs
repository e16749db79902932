//! The management API's DLQ and replay-job endpoints: list, show, replay (a durable job run by
//! the dlq service), purge, and the jobs (list, show, cancel). They select through dlq-ops's
//! [`Selection`] and [`DlqReader`] (never consuming), delete through the CLI's
//! [`purge::delete`] and cancel through its [`jobs::cancel_job`], so the API and `switchyard
//! dlq` agree. A tenant's key reaches its own entries and jobs only: another tenant's are
//! `404`, as if they did not exist.

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_dlq_ops::{DlqReader, JobRecord, JobSpec, JobStore, Selection, StoreError};
use switchyard_keys::TenantId;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Principal;
use super::error::ApiError;
use super::handlers::{
    MAX_LISTED, MAX_PAGE, anyhow_unavailable, caller_for, copy_of, known_parameters, number,
    principal, unavailable,
};
use crate::commands::dlq::{jobs, purge, show};

/// A page of DLQ entries, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DlqPage {
    /// The entries (the JSON of `switchyard dlq show --json`).
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<Value>,
    /// Whether more entries matched than the page holds.
    pub truncated: bool,
}

/// A replay job (the record in `dlq-jobs`, as `switchyard dlq jobs --json` shows it).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// The job id.
    pub id: String,
    /// The whole record: spec, state, progress.
    #[schema(value_type = Object)]
    pub job: Value,
}

/// What `POST …/dlq/replay` replays: listed sequences, or filters within the tenant.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Exactly these DLQ sequences (of this tenant); not with filters.
    #[serde(default)]
    pub seqs: Vec<u64>,
    /// Only entries with this code (`retries_exhausted`, …).
    pub code: Option<String>,
    /// Only one destination's copies (a destination id, or `_route`).
    pub destination: Option<String>,
    /// Replays per second (default 100, 1 to 10 000).
    pub rate: Option<u32>,
    /// Only plan: publish nothing, delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What `POST …/dlq/purge` deletes: listed sequences, or filters within the tenant (none: every
/// entry of the tenant). Nothing is deleted without `confirm`, the number of entries the
/// caller expects to delete (what a dry run reported as `matched`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Exactly these DLQ sequences (of this tenant); not with filters.
    #[serde(default)]
    pub seqs: Vec<u64>,
    /// Only entries with this code (`retries_exhausted`, …).
    pub code: Option<String>,
    /// Only one destination's copies (a destination id, or `_route`).
    pub destination: Option<String>,
    /// Only report what would be deleted: `matched` and `selected`.
    #[serde(default)]
    pub dry_run: bool,
    /// Required unless `dry_run`: how many entries the selection matches. When it matches
    /// another number now, nothing is deleted (`409 count_mismatch`).
    pub confirm: Option<u64>,
    /// Required unless `dry_run` or `seqs`: the dry run's `through`. Only entries at or below
    /// it are selected, so an entry stored after the dry run is never deleted unseen.
    pub through: Option<u64>,
}

/// What a purge deleted (or, in a dry run, would delete).
#[derive(Debug, Serialize, ToSchema)]
pub struct PurgeResult {
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
    /// How many of the tenant's entries the selection matched.
    pub matched: u64,
    /// Their sequences, oldest first.
    pub selected: Vec<u64>,
    /// The highest of them (0 when none): what a purge confirming this dry run names as
    /// `through`.
    pub through: u64,
    /// Sequences deleted (empty in a dry run).
    pub removed: Vec<u64>,
    /// Selected sequences that were gone when deleted, and listed sequences that are not the
    /// tenant's entries.
    pub not_found: Vec<u64>,
}

/// The selection of a tenant's DLQ entries from `code` and `destination` (query parameters or
/// body fields).
pub(crate) fn dlq_selection(
    tenant: &TenantId,
    code: Option<&String>,
    destination: Option<&String>,
) -> Result<Selection, ApiError> {
    Ok(Selection {
        tenant: Some(tenant.clone()),
        code: code
            .map(|c| crate::parse::dlq_code(c))
            .transpose()
            .map_err(ApiError::bad_request)?,
        destination: copy_of(destination)?,
        ..Selection::default()
    })
}

/// The tenant's entries a request selects: sequences stored now, oldest first.
pub(crate) struct Matched {
    /// Their sequences.
    pub(crate) seqs: Vec<u64>,
    /// Listed sequences that are not among them.
    pub(crate) unlisted: Vec<u64>,
}

/// Reads which of `tenant`'s entries match `filter` and, when `listed` is not empty, are
/// listed; stops after `cap` matches (so a caller can tell "more than `cap - 1`"). Only
/// readable records of the tenant count: what the listing shows is what a replay or purge
/// reaches.
pub(crate) async fn matching(
    reader: &DlqReader,
    tenant: &TenantId,
    filter: &Selection,
    listed: &[u64],
    cap: usize,
) -> Result<Matched, ApiError> {
    let wanted: HashSet<u64> = listed.iter().copied().collect();
    let mut seqs = Vec::new();
    let mut read = reader.select(filter);
    while let Some((_, delivered)) = read.next().await.map_err(unavailable)? {
        if let Ok(entry) = &delivered.entry
            && entry.record.tenant.as_ref() == Some(tenant)
            && filter.matches(entry)
            && (wanted.is_empty() || wanted.contains(&entry.seq))
        {
            seqs.push(entry.seq);
            if seqs.len() >= cap {
                break;
            }
        }
    }
    let found: HashSet<u64> = seqs.iter().copied().collect();
    let mut unlisted: Vec<u64> = wanted.difference(&found).copied().collect();
    unlisted.sort_unstable();
    Ok(Matched { seqs, unlisted })
}

/// Listed sequences or filters, not both, and not too many.
fn check_listed(
    seqs: &[u64],
    code: Option<&String>,
    destination: Option<&String>,
) -> Result<(), ApiError> {
    if !seqs.is_empty() && (code.is_some() || destination.is_some()) {
        return Err(ApiError::bad_request("list seqs or filter, not both"));
    }
    if seqs.len() > MAX_LISTED {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_LISTED} seqs; select more with filters"
        )));
    }
    Ok(())
}

/// A tenant's DLQ entries, oldest first (`limit`: 1 to 1000, default 100; `code`,
/// `destination` filters). Never consumes.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/dlq", tag = "dlq",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("limit" = Option<u32>, Query, description = "at most this many (1 to 1000, default 100)", minimum = 1, maximum = 1000),
           ("code" = Option<String>, Query, description = "only this DLQ code"),
           ("destination" = Option<String>, Query, description = "only this destination's copies")),
    responses((status = 200, body = DlqPage), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn list_dlq(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DlqPage>, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    known_parameters(&query, &["limit", "code", "destination"])?;
    let limit = number(&query, "limit", 100, MAX_PAGE)?;
    let selection = dlq_selection(&tenant, query.get("code"), query.get("destination"))?;
    let reader = state.dlq().await?;
    let collected = reader
        .collect(&selection, Some(limit), |_, _| {})
        .await
        .map_err(unavailable)?;
    Ok(Json(DlqPage {
        entries: collected
            .entries
            .iter()
            .map(|e| serde_json::to_value(e.view()).unwrap_or(Value::Null))
            .collect(),
        truncated: collected.truncated,
    }))
}

/// A tenant's DLQ entries as NDJSON, the format of `switchyard dlq export` (one line per entry:
/// its JSON view, payload and every stored header; sealed payloads stay sealed), oldest first,
/// streamed as read: `switchyard dlq import` takes the file back. Filters `code`,
/// `destination`, `since`, `until` (RFC 3339, or an age: 2h, 3d). Never consumes.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/dlq/export", tag = "dlq",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("code" = Option<String>, Query, description = "only this DLQ code"),
           ("destination" = Option<String>, Query, description = "only this destination's copies"),
           ("since" = Option<String>, Query, description = "only entries stored at or after this time (RFC 3339, or an age: 30s, 15m, 2h, 3d)"),
           ("until" = Option<String>, Query, description = "only entries stored before this time (RFC 3339, or an age)")),
    responses((status = 200, content_type = "application/x-ndjson", body = String, description = "one export line per entry"),
              (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn export_dlq(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    known_parameters(&query, &["code", "destination", "since", "until"])?;
    let mut selection = dlq_selection(&tenant, query.get("code"), query.get("destination"))?;
    let time = |name: &str| {
        query
            .get(name)
            .map(|raw| {
                crate::parse::time(raw).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
            })
            .transpose()
    };
    selection.since = time("since")?;
    selection.until = time("until")?;
    selection
        .check_time_range()
        .map_err(ApiError::bad_request)?;
    let reader = state.dlq().await?;
    Ok(export(&reader, selection, &format!("dlq-{tenant}.ndjson")))
}

/// Bytes of export lines gathered before they are sent as one chunk.
const EXPORT_CHUNK: usize = 64 * 1024;

/// The answer of an export: `application/x-ndjson`, an attachment named `file_name`, the
/// entries `selection` matches as stored now streamed as they are read (a bounded channel:
/// never the whole DLQ in memory; a client that goes away stops the read). Stored messages
/// that are not valid DLQ records are left out, as `dlq export` leaves them out. A read that
/// fails midway ends the body with an error, so the client sees a broken transfer rather than
/// a file that looks whole. What `GET …/dlq/export` and the console's export link answer.
pub(crate) fn export(reader: &DlqReader, selection: Selection, file_name: &str) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let ns = reader.namespace().clone();
    let mut read = reader.select(&selection);
    tokio::spawn(async move {
        let mut chunk = Vec::with_capacity(EXPORT_CHUNK);
        loop {
            let (message, delivered) = match read.next().await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            if !delivered
                .entry
                .as_ref()
                .is_ok_and(|entry| selection.matches(entry))
            {
                continue;
            }
            let line = switchyard_dlq_ops::ExportLine::of_read(&ns, &message, &delivered)
                .map_err(|e| e.to_string())
                .and_then(|line| serde_json::to_vec(&line).map_err(|e| e.to_string()));
            match line {
                Ok(line) => {
                    chunk.extend_from_slice(&line);
                    chunk.push(b'\n');
                }
                Err(e) => {
                    let error = format!("exporting DLQ entry {}: {e}", delivered.seq);
                    let _ = tx.send(Err(std::io::Error::other(error))).await;
                    return;
                }
            }
            if chunk.len() >= EXPORT_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(EXPORT_CHUNK));
                if tx.send(Ok(Bytes::from(full))).await.is_err() {
                    return;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(Ok(Bytes::from(chunk))).await;
        }
    });
    let body = axum::body::Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/x-ndjson".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// One DLQ entry of the tenant, by its sequence.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/dlq/{seq}", tag = "dlq",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("seq" = u64, Path, description = "DLQ sequence", minimum = 1)),
    responses((status = 200, body = Object), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_dlq_entry(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((tenant, seq)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    // Stream sequences start at 1.
    let seq: u64 = match seq.parse() {
        Ok(seq) if seq >= 1 => seq,
        _ => return Err(ApiError::bad_request("seq must be a whole number from 1")),
    };
    let reader = state.dlq().await?;
    let not_found = || ApiError::not_found(format!("no DLQ entry {seq} of tenant {tenant}"));
    let Some(message) = reader.get(seq).await.map_err(unavailable)? else {
        return Err(not_found());
    };
    match reader.entry_of(&message) {
        Ok(entry) if entry.record.tenant.as_ref() == Some(&tenant) => {
            // An encrypted payload: decrypted with the API's KEK, or shown sealed and why.
            let keys = state
                .data_keys
                .as_deref()
                .map(|(store, ring)| (store, ring));
            let sealed = show::unseal(&entry, keys).await;
            Ok(Json(
                show::json_view(&entry, &sealed).map_err(|e| anyhow_unavailable(&e))?,
            ))
        }
        // Another tenant's, or not a record: nothing of it is shown.
        _ => Err(not_found()),
    }
}

/// The most replay jobs one tenant may have pending or running at once.
pub const MAX_ACTIVE_JOBS: usize = 10;

/// Replays a tenant's DLQ entries through a durable replay job run by the dlq service (at most
/// [`MAX_ACTIVE_JOBS`] of a tenant's pending or running: `429 too_many_jobs`).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/dlq/replay", tag = "dlq",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    request_body(content = ReplayRequest),
    responses((status = 202, body = JobView), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 422, body = ApiError), (status = 429, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn replay_dlq(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    let request: ReplayRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let job = start_replay(&state, &tenant, request).await?;
    Ok((StatusCode::ACCEPTED, Json(job_view(&job))).into_response())
}

/// Creates the replay job a request asks for over `tenant`'s entries (what `POST
/// …/dlq/replay` and the console's replay do): the rate checked, listed sequences or filters,
/// at most [`MAX_ACTIVE_JOBS`] of the tenant's active, only the tenant's entries counted; the
/// dlq service is woken.
///
/// Errors: `400` bad rate or selection, `422 nothing_matches`, `429 too_many_jobs`, `503`.
pub(crate) async fn start_replay(
    state: &ApiState,
    tenant: &TenantId,
    request: ReplayRequest,
) -> Result<JobRecord, ApiError> {
    let tenant = tenant.clone();
    let rate = request.rate.unwrap_or(100);
    if !(1..=10_000).contains(&rate) {
        return Err(ApiError::bad_request("rate must be from 1 to 10000"));
    }
    let filter = dlq_selection(&tenant, request.code.as_ref(), request.destination.as_ref())?;
    check_listed(
        &request.seqs,
        request.code.as_ref(),
        request.destination.as_ref(),
    )?;
    // A tenant's jobs are bounded: each is a record in the bucket every tenant shares, and a
    // run of the dlq service.
    let active = state
        .jobs
        .list()
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter_map(Result::ok)
        .filter(|(job, _)| {
            !job.state.is_finished() && job.spec.selection.tenant.as_ref() == Some(&tenant)
        })
        .count();
    if active >= MAX_ACTIVE_JOBS {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_jobs",
            format!(
                "tenant {tenant} has {active} replay jobs pending or running, the most it may \
                 have: wait for one to finish (or cancel one)"
            ),
        ));
    }
    let reader = state.dlq().await?;
    // Only the tenant's own entries count, listed or filtered.
    let matched = matching(&reader, &tenant, &filter, &request.seqs, usize::MAX).await?;
    let (count, upper) = (
        matched.seqs.len() as u64,
        matched.seqs.iter().copied().max().unwrap_or(0),
    );
    if count == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "nothing_matches",
            "no DLQ entry of the tenant matches: no job created",
        ));
    }
    let selection = if request.seqs.is_empty() {
        filter
    } else {
        // The listed entries are the tenant's: the job says so (and skips any other).
        Selection {
            tenant: Some(tenant.clone()),
            ..Selection::listed(matched.seqs)
        }
    };
    let job = JobRecord::new(
        JobSpec {
            selection,
            target: None,
            rate,
            dry_run: request.dry_run,
            upper_seq: upper,
            total: count,
        },
        OffsetDateTime::now_utc(),
    );
    state.jobs.create(&job).await.map_err(unavailable)?;
    jobs::announce(&state.js, &state.topology, &job.id).await;
    Ok(job)
}

/// Deletes a tenant's DLQ entries: listed sequences, or what the filters select (none: every
/// entry of the tenant), at most 10 000 a request. A dry run (`"dry_run": true`) reports what
/// would go and `through`; a purge itself needs `"confirm": <matched>` and, for a filtered
/// selection, the dry run's `"through"`: it deletes only entries at or below it, exactly those
/// selected then, one sequence at a time (an entry stored after the dry run is never deleted
/// unseen; one gone meanwhile makes the count differ: `409`).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/dlq/purge", tag = "dlq",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    request_body(content = PurgeRequest),
    responses((status = 200, body = PurgeResult), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 409, body = ApiError), (status = 422, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn purge_dlq(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Json<PurgeResult>, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    let request: PurgeRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(purge_entries(&state, &tenant, request).await?))
}

/// Deletes (or, in a dry run, lists) `tenant`'s DLQ entries a purge request selects: what
/// `POST …/dlq/purge` and the console's purge do (confirmation by count and `through`, at most
/// [`MAX_LISTED`], one sequence at a time).
///
/// Errors: `400` a bad selection, `422 confirmation_required` / `too_many`, `409
/// count_mismatch` (nothing deleted), `503`.
pub(crate) async fn purge_entries(
    state: &ApiState,
    tenant: &TenantId,
    request: PurgeRequest,
) -> Result<PurgeResult, ApiError> {
    let tenant = tenant.clone();
    let filter = dlq_selection(&tenant, request.code.as_ref(), request.destination.as_ref())?;
    check_listed(
        &request.seqs,
        request.code.as_ref(),
        request.destination.as_ref(),
    )?;
    let unconfirmed =
        request.confirm.is_none() || (request.seqs.is_empty() && request.through.is_none());
    if !request.dry_run && unconfirmed {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "confirmation_required",
            "a purge needs \"confirm\": the number of entries it deletes, and, unless it lists \
             \"seqs\", \"through\": the dry run's (run it with \"dry_run\": true to see them)",
        ));
    }
    let reader = state.dlq().await?;
    let mut matched = matching(&reader, &tenant, &filter, &request.seqs, MAX_LISTED + 1).await?;
    if let (false, Some(through)) = (request.dry_run, request.through) {
        matched.seqs.retain(|seq| *seq <= through);
    }
    if matched.seqs.len() > MAX_LISTED {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many",
            format!(
                "more than {MAX_LISTED} entries match: narrow the selection (code, destination, \
                 listed seqs) or purge with `switchyard dlq purge`"
            ),
        ));
    }
    let count = matched.seqs.len() as u64;
    let mut result = PurgeResult {
        dry_run: request.dry_run,
        matched: count,
        through: matched.seqs.iter().copied().max().unwrap_or(0),
        selected: matched.seqs,
        removed: Vec::new(),
        not_found: matched.unlisted,
    };
    if request.dry_run {
        return Ok(result);
    }
    if request.confirm != Some(count) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "count_mismatch",
            format!(
                "the selection matches {count} entries now, not {}: nothing was deleted",
                request.confirm.unwrap_or_default()
            ),
        ));
    }
    let report = purge::delete(reader.stream(), &result.selected, || {})
        .await
        .map_err(|e| anyhow_unavailable(&e))?;
    result.removed = report.removed;
    result.not_found.extend(report.not_found);
    result.not_found.sort_unstable();
    Ok(result)
}

fn job_view(job: &JobRecord) -> JobView {
    JobView {
        id: job.id.clone(),
        job: serde_json::to_value(job).unwrap_or(Value::Null),
    }
}

/// Whether `principal` may see `job`: the operator every job, a tenant the jobs over its own
/// entries.
pub(crate) fn visible(principal: &Principal, job: &JobRecord) -> bool {
    match principal {
        Principal::Operator => true,
        Principal::Tenant(own) => job.spec.selection.tenant.as_ref() == Some(own),
    }
}

/// A failed job read: `400` when the path's id is not a job id, `503` otherwise.
pub(crate) fn job_error(error: StoreError) -> ApiError {
    match error {
        StoreError::InvalidKey { .. } => ApiError::bad_request("not a job id"),
        error => unavailable(error),
    }
}

/// Replay jobs, oldest first (`switchyard dlq jobs --json`): the operator's every job, a
/// tenant's its own.
#[utoipa::path(get, path = "/v1/jobs", tag = "dlq",
    responses((status = 200, body = Vec<JobView>), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn list_jobs(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let principal = principal(&state, &headers).await?;
    let listed = state.jobs.list().await.map_err(unavailable)?;
    Ok(Json(
        listed
            .into_iter()
            // A record that does not decode is nobody's to see (the CLI warns about it).
            .filter_map(Result::ok)
            .filter(|(job, _)| visible(&principal, job))
            .map(|(job, _)| job_view(&job))
            .collect(),
    ))
}

/// A replay job: a tenant sees only jobs over its own entries.
#[utoipa::path(get, path = "/v1/jobs/{job}", tag = "dlq",
    params(("job" = String, Path, description = "job id (a UUID)")),
    responses((status = 200, body = JobView), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_job(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(job): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let principal = principal(&state, &headers).await?;
    let found = state.jobs.get(&job).await.map_err(job_error)?;
    match found {
        Some((record, _)) if visible(&principal, &record) => Ok(Json(job_view(&record))),
        _ => Err(no_job(&job)),
    }
}

fn no_job(job: &str) -> ApiError {
    ApiError::not_found(format!("no job {}", crate::output::printable(job)))
}

/// Cancels a replay job (`switchyard dlq jobs JOB --cancel`): entries already replayed stay
/// replayed, the rest stay in the DLQ. A tenant cancels only jobs over its own entries.
#[utoipa::path(post, path = "/v1/jobs/{job}/cancel", tag = "dlq",
    params(("job" = String, Path, description = "job id (a UUID)")),
    responses((status = 200, body = JobView), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn cancel_job(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(job): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let principal = principal(&state, &headers).await?;
    let cancelled = jobs::cancel_job(&state.jobs, &job, |record| visible(&principal, record))
        .await
        .map_err(job_error)?;
    match cancelled {
        jobs::Cancelled::Cancelled(record) => Ok(Json(job_view(&record))),
        jobs::Cancelled::Finished(record) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "finished",
            format!("job {} is already {}", record.id, record.state),
        )),
        jobs::Cancelled::NoSuchJob => Err(no_job(&job)),
        jobs::Cancelled::KeptChanging => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the job kept changing; try again",
        )),
    }
}

/// A job store over the `dlq-jobs` bucket (for `ApiState`).
pub fn job_store(kv: async_nats::jetstream::kv::Store) -> JobStore {
    JobStore::new(kv)
}

/// The DLQ reader of the deployment.
pub async fn dlq_reader(state: &ApiState) -> Result<DlqReader, ApiError> {
    let stream = crate::resources::dlq_stream(&state.js, &state.topology)
        .await
        .map_err(unavailable)?;
    Ok(DlqReader::new(stream, state.topology.namespace.clone()))
}
