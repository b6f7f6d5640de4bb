//! A store's messages: browse with filters and a cursor, look at one,
//! replay and purge (as jobs), and the jobs themselves. The work is
//! `dead_letters`'; this is its HTTP face.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::Deserialize;

use super::extract::{Body, Path, Query};
use super::{Named, error};
use crate::api::{
    DryRun, ErrorBody, JobKind, JobView, MessageView, NEXT_CURSOR, Purged, Selection,
};
use crate::dead_letters::jobs::Work;
use crate::dead_letters::{self, Filter};
use crate::store::{Store, StoreError};
use crate::tenant::Tenant;

/// Most messages one page returns.
pub const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 10;

#[derive(Deserialize)]
pub(super) struct StoreAndId {
    name: String,
    id: String,
}

#[derive(Deserialize)]
pub(super) struct JobId {
    id: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Messages on this page (default 10).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Where the page starts: the `Wharf-Next-Cursor` of the page before.
    cursor: Option<String>,
    /// From this time on (inclusive): RFC 3339, or a duration ago (`30m`);
    /// read against a dead letter's dead-lettered time, else its received time.
    since: Option<String>,
    /// Before this time (exclusive), the same way.
    until: Option<String>,
    /// Comma-separated, any may match: a status (`503`), a class (`5xx`),
    /// `transport`, `handler`, `status`.
    status: Option<String>,
    /// Only what this processor dead-lettered.
    processor: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DryRunQuery {
    /// Only count what would be touched.
    #[serde(default)]
    dry_run: bool,
}

fn no_store(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format_args!("no store named {name:?}"),
    )
}

/// The answers [`store_failed`] gives that an operation of a store may meet.
#[derive(utoipa::IntoResponses)]
#[allow(
    dead_code,
    reason = "it describes answers for the OpenAPI description; never built"
)]
pub(super) enum StoreRefusals {
    /// What the store's backend cannot do here: remove from a broker store a
    /// processor here consumes, browse a RabbitMQ queue past 65,535 messages.
    #[response(status = 501)]
    Unsupported(ErrorBody),
    /// The broker is out of reach, or another consumer holds the queue: try again.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// A store's failure as an answer: 501 for what its backend cannot do, 400
/// for a cursor it did not give out, 503 for what may work later, else 500.
fn store_failed(e: StoreError) -> Response {
    match &e {
        StoreError::Unsupported { .. } => error(StatusCode::NOT_IMPLEMENTED, e),
        StoreError::BadPosition { .. } => {
            error(StatusCode::BAD_REQUEST, format_args!("cursor: {e}"))
        }
        // The broker away, or busy with another consumer: try again later.
        StoreError::Transient { .. } | StoreError::Full { .. } => {
            error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn store(tenant: &Tenant, name: &str) -> Option<Arc<dyn Store>> {
    tenant.pipeline.view().stores.get(name).cloned()
}

/// A store's messages, oldest first, filtered, a page at a time, without
/// taking them; the next page's cursor is in the `Wharf-Next-Cursor` header.
#[utoipa::path(get, path = "/stores/{name}/messages", tag = "messages", operation_id = "list_messages",
    params(("name" = String, Path, description = "the store"), ListQuery),
    responses(
        (status = 200, body = Vec<MessageView>,
            headers(("wharf-next-cursor" = String, description = "the cursor of the next page; absent on the last"))),
        (status = 400, body = ErrorBody, description = "a bad limit, filter or cursor"),
        (status = 404, body = ErrorBody, description = "no such store"),
        StoreRefusals,
    ))]
pub(super) async fn list(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
    Query(query): Query<ListQuery>,
) -> Response {
    let Some(store) = store(&tenant, &name) else {
        return no_store(&name);
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            format_args!("limit must be 1..={MAX_PAGE}"),
        );
    }
    let filter = match Filter::read(
        None,
        query.since.as_deref(),
        query.until.as_deref(),
        query.status.as_deref(),
        query.processor.as_deref(),
    ) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let page = match dead_letters::find(&*store, &filter, query.cursor, limit).await {
        Ok(page) => page,
        Err(e) => return store_failed(e),
    };
    let views: Vec<MessageView> = page
        .found
        .iter()
        .map(|b| MessageView::of(&b.message))
        .collect();
    let mut response = axum::Json(views).into_response();
    if let Some(next) = page.next
        && let Ok(value) = HeaderValue::from_str(&next)
    {
        response.headers_mut().insert(NEXT_CURSOR, value);
    }
    response
}

/// The message `id` of `store`, with its position, if it is there.
async fn find_one(
    store: &dyn Store,
    id: &str,
) -> Result<Option<crate::store::Browsed>, StoreError> {
    let filter = Filter {
        ids: Some([id.to_owned()].into()),
        ..Filter::default()
    };
    Ok(dead_letters::find(store, &filter, None, 1)
        .await?
        .found
        .pop())
}

/// One message of a store, with its failure trail if it is a dead letter.
#[utoipa::path(get, path = "/stores/{name}/messages/{id}", tag = "messages", operation_id = "get_message",
    params(("name" = String, Path, description = "the store"), ("id" = String, Path, description = "the message id")),
    responses(
        (status = 200, body = MessageView),
        (status = 404, body = ErrorBody, description = "no such store, or no such message in it"),
        StoreRefusals,
    ))]
pub(super) async fn get_one(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(StoreAndId { name, id }): Path<StoreAndId>,
) -> Response {
    let Some(store) = store(&tenant, &name) else {
        return no_store(&name);
    };
    match find_one(&*store, &id).await {
        Ok(Some(b)) => axum::Json(MessageView::of(&b.message)).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format_args!("no message {id:?} in store {name:?}"),
        ),
        Err(e) => store_failed(e),
    }
}

/// Removes one message from a store for good.
#[utoipa::path(delete, path = "/stores/{name}/messages/{id}", tag = "messages", operation_id = "delete_message",
    params(("name" = String, Path, description = "the store"), ("id" = String, Path, description = "the message id")),
    responses(
        (status = 200, body = Purged),
        (status = 404, body = ErrorBody, description = "no such store, or no such message in it"),
        (status = 409, body = ErrorBody, description = "a processor holds the message now; it stays"),
        StoreRefusals,
    ))]
pub(super) async fn delete_one(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(StoreAndId { name, id }): Path<StoreAndId>,
) -> Response {
    let Some(store) = store(&tenant, &name) else {
        return no_store(&name);
    };
    let found = match find_one(&*store, &id).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format_args!("no message {id:?} in store {name:?}"),
            );
        }
        Err(e) => return store_failed(e),
    };
    match store.remove(&[found.position]).await {
        Ok(r) if r.in_flight > 0 => error(
            StatusCode::CONFLICT,
            format_args!(
                "message {id:?} is in flight (a processor of store {name:?} holds it); it stays"
            ),
        ),
        Ok(r) => {
            if r.removed > 0 {
                tenant.limits.left(found.message.body.len() as u64);
            }
            axum::Json(Purged { removed: r.removed }).into_response()
        }
        Err(e) => store_failed(e),
    }
}

/// The selection in a replay or purge body; the error answers 422.
fn selection(body: &Bytes) -> Result<(Selection, Filter), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(
            "the body names the messages: {\"ids\": [...]}, a filter (since, until, status, processor), or {\"all\": true}".into(),
        );
    }
    let selection: Selection =
        serde_json::from_slice(body).map_err(|e| format!("the body: {e}"))?;
    let filter = Filter::of_selection(&selection)?;
    Ok((selection, filter))
}

async fn start(
    tenant: Arc<Tenant>,
    name: String,
    dry_run: bool,
    body: Bytes,
    kind: JobKind,
) -> Response {
    let stores = tenant.pipeline.view().stores.clone();
    let Some(store) = stores.get(&name).cloned() else {
        return no_store(&name);
    };
    let (selection, filter) = match selection(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    if kind == JobKind::Purge && selection.to_store.is_some() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "to_store is for a replay; a purge removes the messages",
        );
    }
    if let Some(to) = &selection.to_store
        && let Err(e) = dead_letters::check_target(&stores, &name, to)
    {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e);
    }
    if dry_run {
        let replay = (kind == JobKind::Replay).then_some(selection.to_store.as_deref());
        return match dead_letters::dry_run(&stores, &name, &*store, &filter, replay).await {
            Ok(Ok(counts)) => axum::Json(counts).into_response(),
            Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
            Err(e) => store_failed(e),
        };
    }
    // A backend that cannot remove says so now, before anything is copied.
    if let Err(e) = store.remove(&[]).await {
        return store_failed(e);
    }
    let limits = tenant.limits.clone();
    let job = tenant.jobs.start(Work {
        kind,
        stores,
        store: name,
        filter,
        to_store: selection.to_store,
        left: Arc::new(move |bytes| limits.left(bytes)),
    });
    (StatusCode::ACCEPTED, axum::Json(job.view())).into_response()
}

/// Moves messages (by id, by filter, or all) to `to_store` or the store
/// each was dead-lettered from, in order, as a job; `?dry_run=true`
/// answers how many would move, and where.
#[utoipa::path(post, path = "/stores/{name}/replay", tag = "messages", operation_id = "replay_messages",
    params(("name" = String, Path, description = "the store the messages are in"), DryRunQuery),
    request_body(content = Selection, content_type = "application/json"),
    responses(
        (status = 200, body = DryRun, description = "a dry run: what would move"),
        (status = 202, body = JobView, description = "the job that moves them"),
        (status = 404, body = ErrorBody, description = "no such store"),
        (status = 422, body = ErrorBody, description = "a selection that does not read, or a target that cannot take them"),
        StoreRefusals,
    ))]
pub(super) async fn replay(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
    Query(DryRunQuery { dry_run }): Query<DryRunQuery>,
    Body(body): Body,
) -> Response {
    start(tenant, name, dry_run, body, JobKind::Replay).await
}

/// Removes messages (by id, by filter, or all) for good, as a job;
/// `?dry_run=true` answers how many it would remove.
#[utoipa::path(delete, path = "/stores/{name}/messages", tag = "messages", operation_id = "purge_messages",
    params(("name" = String, Path, description = "the store"), DryRunQuery),
    request_body(content = Selection, content_type = "application/json"),
    responses(
        (status = 200, body = DryRun, description = "a dry run: what would be removed"),
        (status = 202, body = JobView, description = "the job that removes them"),
        (status = 404, body = ErrorBody, description = "no such store"),
        (status = 422, body = ErrorBody, description = "a selection that does not read"),
        StoreRefusals,
    ))]
pub(super) async fn purge(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
    Query(DryRunQuery { dry_run }): Query<DryRunQuery>,
    Body(body): Body,
) -> Response {
    start(tenant, name, dry_run, body, JobKind::Purge).await
}

/// The tenant's replay and purge jobs since the start (kept in memory).
#[utoipa::path(get, path = "/jobs", tag = "jobs", responses((status = 200, body = Vec<JobView>)))]
pub(super) async fn list_jobs(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    axum::Json(tenant.jobs.list()).into_response()
}

fn no_job(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, format_args!("no job {id:?}"))
}

/// A job's progress.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "the job")),
    responses(
        (status = 200, body = JobView),
        (status = 404, body = ErrorBody, description = "no such job"),
    ))]
pub(super) async fn get_job(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(JobId { id }): Path<JobId>,
) -> Response {
    match tenant.jobs.get(&id) {
        Some(job) => axum::Json(job.view()).into_response(),
        None => no_job(&id),
    }
}

/// Cancels a job after its current batch.
#[utoipa::path(delete, path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "the job")),
    responses(
        (status = 200, body = JobView, description = "the job, cancelled (or ended already)"),
        (status = 404, body = ErrorBody, description = "no such job"),
    ))]
pub(super) async fn cancel_job(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(JobId { id }): Path<JobId>,
) -> Response {
    if !tenant.jobs.cancel(&id) {
        return no_job(&id);
    }
    match tenant.jobs.get(&id) {
        Some(job) => axum::Json(job.view()).into_response(),
        None => no_job(&id),
    }
}
