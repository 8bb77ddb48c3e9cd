//! The OpenAPI 3.1 contract, generated from the route annotations. The checked-in
//! `openapi.yaml` must equal [`yaml`]; a test fails when they drift
//! (regenerate with `cargo run --bin crm-api -- openapi > openapi.yaml`).

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = crate::routes::api_router().split_for_parts().1;
    doc.merge(crm_mobile_bridge::openapi());
    doc
}

/// The document as YAML, rendered once.
pub fn yaml() -> Result<String, String> {
    static YAML: OnceLock<Result<String, String>> = OnceLock::new();
    YAML.get_or_init(|| document().to_yaml().map_err(|e| e.to_string()))
        .clone()
}
