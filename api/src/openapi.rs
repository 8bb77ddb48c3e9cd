//! The OpenAPI 3.1 contract, generated from the route annotations. The checked-in
//! `openapi.yaml` must equal [`yaml`]; a test fails when they drift
//! (regenerate with `cargo run --bin crm-api -- openapi > openapi.yaml`).

use std::sync::OnceLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "CRM API",
        description = "Customer-engagement CRM: customers, engagements across web, call, SMS, WhatsApp and email, search and caller-ID. Errors are RFC 9457 problem documents with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(crate::error::Problem))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A staff JWT access token, an integration's API key, or (on /v1/mobile only) a device token",
                    ))
                    .build(),
            ),
        );
    }
}

/// The answers any route can give, whatever it does: added to every
/// operation that does not document them itself, so that the contract lists
/// every status the server really sends.
struct CommonResponses;

impl CommonResponses {
    fn add(operation: &mut Operation, status: &str, description: &str) {
        if operation.responses.responses.contains_key(status) {
            return;
        }
        let problem = ContentBuilder::new()
            .schema(Some(RefOr::Ref(Ref::from_schema_name("Problem"))))
            .build();
        let response = ResponseBuilder::new()
            .description(description)
            .content("application/problem+json", problem)
            .build();
        operation
            .responses
            .responses
            .insert(status.to_string(), RefOr::T(response));
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                (&mut item.get, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ];
            for (operation, write) in operations {
                let Some(operation) = operation.as_mut() else {
                    continue;
                };
                // `security(())` on a route: no credentials needed.
                let public = operation
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|r| *r == SecurityRequirement::default()));
                if operation.request_body.is_some() {
                    Self::add(
                        operation,
                        "400",
                        "`malformed_json`: the body is not JSON (or repeats a key)",
                    );
                    Self::add(
                        operation,
                        "413",
                        "`payload_too_large`: the body is over the route's limit",
                    );
                    Self::add(
                        operation,
                        "415",
                        "`unsupported_media_type`: the body is not `application/json`",
                    );
                }
                if !public {
                    Self::add(
                        operation,
                        "401",
                        "`unauthorized`: no credentials, or credentials that are not (or no longer) valid",
                    );
                    Self::add(
                        operation,
                        "403",
                        "`forbidden`: the caller's role or scopes do not allow this",
                    );
                }
                Self::add(
                    operation,
                    "422",
                    "`validation_failed`: every bad field is listed in `errors`",
                );
                if write {
                    const CONTENTION: &str = "`contention`: a concurrent write to the same \
                        records; send the same request again after `Retry-After` seconds";
                    match operation.responses.responses.get_mut("409") {
                        Some(RefOr::T(response)) => {
                            response.description =
                                format!("{}; or {CONTENTION}", response.description);
                        }
                        Some(RefOr::Ref(_)) => {}
                        None => Self::add(operation, "409", CONTENTION),
                    }
                }
                Self::add(
                    operation,
                    "503",
                    "`unavailable`: the store cannot be reached; retry after `Retry-After` seconds",
                );
            }
        }
    }
}

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = crate::routes::api_router().split_for_parts().1;
    doc.merge(crm_mobile_bridge::openapi());
    CommonResponses.modify(&mut doc);
    doc
}

/// The document as YAML, rendered once.
pub fn yaml() -> Result<String, String> {
    static YAML: OnceLock<Result<String, String>> = OnceLock::new();
    YAML.get_or_init(|| document().to_yaml().map_err(|e| e.to_string()))
        .clone()
}
