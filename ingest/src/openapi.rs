//! The OpenAPI 3.1 document served at `/api/openapi.json`, derived by utoipa from the
//! handlers' `#[utoipa::path]` attributes (routes, parameters, examples, answers) and from the
//! types they send and receive (the model's wire types, the read API's rows, the error body).
//! `tests/openapi.rs` checks that it lists exactly the routes the router serves and that
//! every documented operation answers as documented.

use std::sync::LazyLock;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Response};
use utoipa::{Modify, OpenApi};

use crate::{api, dashboard, read};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "FiberStack ingest and read API",
        description = "fiber-ingest: probes send batches of samples here; they are appended to the Redis stream `fiber:samples:<region>` and stored by fiber-etl. A 202 means the batch is in Redis. With a DATABASE_URL the same service answers read queries over the stored samples and rollups.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "http://fiberstack-ingest-ghana.fiberstack.svc:8080", description = "a region's ingest Service")),
    security(("bearer" = [])),
    paths(
        api::post_samples,
        api::post_push,
        read::nodes,
        read::metrics,
        read::status,
        dashboard::metrics,
        dashboard::metrics_preflight,
        dashboard::nodes,
        dashboard::nodes_preflight,
        api::openapi,
        api::healthz,
        api::readyz,
        api::metrics,
    ),
    // The rows are referenced from `MetricsAnswer`'s hand-built `rows` schema, which utoipa
    // does not follow.
    components(schemas(read::RawRow, read::RollupRow)),
    tags(
        (name = "ingest", description = "What probes send."),
        (name = "read", description = "Stored samples and rollups (needs a DATABASE_URL)."),
        (name = "dashboard", description = "Seed 000's dashboard read API, in its shapes (needs a DATABASE_URL): a read rate limit per client address (`--read-rate-per-minute`, 1000 by default) and CORS for the origins of `--cors-origins` (none by default: no CORS header, every preflight refused)."),
        (name = "service", description = "Health, readiness, metrics, status and this document."),
    ),
    modifiers(&BearerToken),
)]
pub struct ApiDoc;

/// The `bearer` scheme the operations' `security` names, and the `WWW-Authenticate`
/// challenge every 401 answer carries (`crate::auth::Refused::challenge`).
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "Writes (POST): the region's probe token (the FiberRegion's token Secret) or a probe pod's projected ServiceAccount token of audience `fiberstack-ingest`, which writes only as the pod's node and FiberProbe. Reads (GET): the reader token; a probe's token is refused there with 403, and the reader token on writes.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
        let challenge = HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String))
            .description(Some(format!(
                "`Bearer realm=\"{realm}\"`, with `error=\"invalid_token\"` when a token was sent and is wrong (RFC 6750).",
                realm = crate::auth::REALM
            )))
            .build();
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                if let Some(RefOr::T(Response { headers, .. })) =
                    operation.responses.responses.get_mut("401")
                {
                    headers.insert("WWW-Authenticate".to_owned(), challenge.clone());
                }
            }
        }
    }
}

/// The document as JSON, built once.
pub static OPENAPI: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
});
