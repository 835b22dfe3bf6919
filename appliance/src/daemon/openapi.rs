//! The control API's OpenAPI document, generated from the handlers' `#[utoipa::path]` and the API types'
//! `ToSchema`, and served at `GET /openapi.json`. Every route is registered with utoipa-axum's `routes!`,
//! which adds the handler to the router and its operation to the document in one step, so that no route
//! is served undocumented. The iPXE routes (`api::ipxe_routes`) are not in it: iPXE firmware fetches them
//! from the separate HTTP port, and they are not the control API.

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Router};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{Components, InfoBuilder, LicenseBuilder, OpenApi, PathItem, Ref, RefOr};
use utoipa::{PartialSchema, ToResponse, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api_types::ErrorBody;

const DESCRIPTION: &str = "The control API of a livemount appliance: live mounts of backups (iSCSI and \
FUSE), browsing their file systems, the AWS accounts and workflows, the jobs that run them, and the daemon's \
status and metrics.\n\n\
The daemon serves it on a local Unix socket (`/run/livemount/api.sock` by default), where no authentication \
is asked: the socket's permissions guard it. With `[remote_api]` configured it also serves it on TCP with \
TLS, where every request needs a bearer token (`bearerAuth`; `livemount token create NAME` on the appliance \
makes one) and is otherwise answered 401. The token routes are served on the local socket only.\n\n\
Errors are answered with the status that says whose fault they are and an `ErrorBody` saying what went \
wrong.";

/// The security scheme of the remote API, as named in the document.
const BEARER: &str = "bearerAuth";

/// The groups of operations, in the order a reader meets them.
const TAGS: [(&str, &str); 7] = [
    ("mounts", "Live mounts of backups, served over iSCSI and as files of the FUSE view."),
    ("browse", "A backup's file systems mounted read-only on the appliance, for file recovery."),
    ("cloud", "AWS: member accounts, the iPXE image, what the appliance made there, backups and restores."),
    ("jobs", "Work in the background (commits, cloud backups and restores), followed by id."),
    ("tokens", "Bearer tokens of the remote API; served on the local socket only."),
    ("status", "The daemon at a glance, its health, and this document."),
    ("metrics", "Prometheus metrics, in the OpenMetrics text format."),
];

/// The request is malformed: a body that is not the JSON the route takes, an id prefix of several backups.
#[derive(ToResponse)]
#[allow(dead_code)] // Only its documentation is used.
pub struct BadRequest(ErrorBody);

/// No such mount, backup, account, job or token.
#[derive(ToResponse)]
#[allow(dead_code)] // Only its documentation is used.
pub struct NotFound(ErrorBody);

/// The request clashes with the state things are in (a mount that is browsed, a name of several mounts,
/// a guest that cannot be prepared, an account still in use).
#[derive(ToResponse)]
#[allow(dead_code)] // Only its documentation is used.
pub struct Conflict(ErrorBody);

/// The appliance failed: its files, a tool it runs, the library's storage.
#[derive(ToResponse)]
#[allow(dead_code)] // Only its documentation is used.
pub struct ServerError(ErrorBody);

/// AWS refused or failed the calls the request needs.
#[derive(ToResponse)]
#[allow(dead_code)] // Only its documentation is used.
pub struct BadGateway(ErrorBody);

/// On the remote API: no `Authorization: Bearer` token, or one that is unknown or revoked.
#[derive(ToResponse)]
#[allow(dead_code)] // Only its documentation is used.
pub struct Unauthorized(ErrorBody);

/// How a request that starts a job can be refused (the job's own failure is in the job).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only its documentation is used.
pub enum JobRefused {
    #[response(status = 400)]
    BadRequest(#[ref_response] BadRequest),
    #[response(status = 404)]
    NotFound(#[ref_response] NotFound),
    #[response(status = 409)]
    Conflict(#[ref_response] Conflict),
    #[response(status = 500)]
    ServerError(#[ref_response] ServerError),
}

/// What a route that starts a job answers when it did.
pub const JOB_STARTED: &str = "The job started: `GET /v1/jobs/{id}` follows it";

/// `api` as one listener serves it, with `GET /openapi.json`. The document describes `api` and
/// `elsewhere`: the routes another listener serves (the remote API documents the token routes too, served
/// on the local socket only, so that both listeners give the same document).
pub fn serve(api: OpenApiRouter, elsewhere: OpenApi) -> Router {
    let (router, mut paths) = api.routes(routes!(openapi_json)).split_for_parts();
    paths.merge(elsewhere);
    let json = document(paths).to_json().expect("an OpenAPI document is plain JSON");
    router.layer(Extension(Document(Bytes::from(json))))
}

/// The document as served, made once.
#[derive(Clone)]
struct Document(Bytes);

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "status",
    responses((status = 200, description = "The OpenAPI 3.1 document of the control API", body = Object))
)]
async fn openapi_json(Extension(doc): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}

/// The document of the operations in `paths`: what the API is, its tags, its security and its error
/// answers (shared by the operations, which name them by status).
fn document(paths: OpenApi) -> OpenApi {
    let mut doc = paths;
    doc.info = InfoBuilder::new()
        .title("livemount appliance API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(DESCRIPTION))
        .license(Some(
            LicenseBuilder::new().name(env!("CARGO_PKG_LICENSE")).identifier(Some(env!("CARGO_PKG_LICENSE"))).build(),
        ))
        .build();
    doc.tags = Some(
        TAGS.iter().map(|(name, about)| TagBuilder::new().name(*name).description(Some(*about)).build()).collect(),
    );

    let components = doc.components.get_or_insert_with(Components::new);
    components.security_schemes.insert(BEARER.into(), SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    // `routes!` gathers the schemas of the bodies the handlers name, not those of the shared responses.
    components.schemas.insert(ErrorBody::name().into(), ErrorBody::schema());
    for (name, response) in [
        BadRequest::response(),
        NotFound::response(),
        Conflict::response(),
        ServerError::response(),
        BadGateway::response(),
        Unauthorized::response(),
    ] {
        components.responses.insert(name.into(), response);
    }

    // Every operation needs the token on the remote API, and may be refused there for the want of one,
    // except those that say otherwise (the token routes, which are never served there).
    doc.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    let (unauthorized, _) = Unauthorized::response();
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            if op.security.is_none() {
                op.responses.responses.insert("401".into(), RefOr::Ref(Ref::from_response_name(unauthorized)));
            }
        }
    }
    doc
}

/// The operations of a path, whatever their methods.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::schema::Schema;

    use super::*;

    /// The stand-in that documents dedup's `CacheStats` has its fields: a field added to the one and not the
    /// other fails here.
    #[test]
    fn the_cache_stats_stand_in_has_the_fields_of_cache_stats() {
        let served = serde_json::to_value(dedup::cache::CacheStats::default()).unwrap();
        let mut served: Vec<String> = served.as_object().unwrap().keys().cloned().collect();
        let RefOr::T(Schema::Object(documented)) = crate::api_types::CacheStatsSchema::schema() else {
            panic!("the stand-in is an object");
        };
        let mut documented: Vec<String> = documented.properties.keys().cloned().collect();
        served.sort();
        documented.sort();
        assert_eq!(served, documented);
    }
}
