//! The admin API's OpenAPI description, served at `/api/v1/openapi.json`.
//!
//! It is made from the code: each handler's `#[utoipa::path]` (registered
//! with axum through `utoipa_axum::routes!`, so a route cannot exist
//! without its description) and the `ToSchema` types of `api.rs`. What
//! every operation shares is added here once: the bearer token, the
//! refusals the layers in front of the handlers give (`401`, `403`,
//! `404`), a path or query that does not read (`400`), and for the
//! copies of the tenant endpoints under `/api/v1/tenants/{tenant}`, the
//! `tenant` parameter and operation ids of their own.

use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Content, OpenApi, PathItem, Ref, RefOr, Required, Response, ResponseBuilder,
};
use utoipa::{PartialSchema, ToSchema};

use crate::api::ErrorBody;

/// Where the description is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// Where a tenant's copies of the tenant endpoints are.
const TENANT_PREFIX: &str = "/api/v1/tenants/{tenant}/";

/// A request body of raw bytes (a plugin's component).
pub(super) struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream")
            .into()
    }
}

impl ToSchema for Binary {}

/// A pipeline document as JSON (the TOML document's keys); its keys are
/// the configuration reference's, checked by the apply itself.
pub(super) struct PipelineDocument;

impl PartialSchema for PipelineDocument {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "stores, routes and processors, as in the config file (without [server])",
            ))
            .into()
    }
}

impl ToSchema for PipelineDocument {}

/// Finishes the description the routes made (see the module doc).
pub(super) fn finish(mut api: OpenApi) -> OpenApi {
    api.info = utoipa::openapi::InfoBuilder::new()
        .title("Wharf admin API")
        .version(env!("CARGO_PKG_VERSION"))
        .license(Some(utoipa::openapi::License::new(env!(
            "CARGO_PKG_LICENSE"
        ))))
        .build();
    api.info.description = Some(
        "Processors, stores and their messages (dead letters: find, replay, purge), jobs, \
         plugins, pipelines, tenants and tokens of a running Wharf. Every `/api/v1` path \
         needs `Authorization: Bearer <token>` when the instance has an admin token. The \
         `default` tenant's objects are at the bare paths, every tenant's (the default's \
         too) under `/api/v1/tenants/{tenant}/`."
            .into(),
    );
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    api.security = Some(vec![SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    for (path, item) in api.paths.paths.iter_mut() {
        let tenant_copy = path.starts_with(TENANT_PREFIX);
        let guarded = path.starts_with("/api/v1/");
        for operation in operations(item) {
            described(operation);
            if tenant_copy {
                in_a_tenant(operation);
            }
            if guarded {
                refusals(operation);
            } else {
                // /healthz and /metrics are open.
                operation.security = Some(Vec::new());
            }
        }
    }
    api
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Every response has a description (OpenAPI requires one): the status's
/// reason phrase where the handler gave none.
fn described(operation: &mut Operation) {
    for (status, response) in operation.responses.responses.iter_mut() {
        if let RefOr::T(response) = response
            && response.description.is_empty()
        {
            response.description = status
                .parse::<u16>()
                .ok()
                .and_then(|s| http::StatusCode::from_u16(s).ok())
                .and_then(|s| s.canonical_reason())
                .unwrap_or("answer")
                .to_owned();
        }
    }
}

/// A tenant endpoint's copy under `/api/v1/tenants/{tenant}/`.
fn in_a_tenant(operation: &mut Operation) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    parameters.insert(
        0,
        RefOr::T(
            ParameterBuilder::new()
                .name("tenant")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some("the tenant"))
                .schema(Some(String::schema()))
                .build(),
        ),
    );
    if let Some(id) = &mut operation.operation_id {
        *id = format!("tenant_{id}");
    }
}

/// The refusals any `/api/v1` operation may give before its handler runs.
fn refusals(operation: &mut Operation) {
    let reads_input = operation.request_body.is_some()
        || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut common = vec![
        ("401", "no token, or not one this instance knows"),
        (
            "403",
            "the token may not do this (a read token's change, an ingress token)",
        ),
        (
            "404",
            "no such tenant or object, or one the token's tenant does not own",
        ),
        ("500", "the instance failed to do it (e.g. a disk write)"),
    ];
    if reads_input {
        common.push(("400", "a path, query or body that does not read"));
    }
    for (status, why) in common {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| refusal(why));
    }
}

fn refusal(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
            )
            .build(),
    )
}
