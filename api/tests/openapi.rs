//! The checked-in contract must be what the code serves.

#[test]
fn openapi_yaml_matches_the_code() {
    let generated = crm_api::openapi::yaml().expect("the document renders");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).expect("openapi.yaml is writable");
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "openapi.yaml differs from the routes; regenerate it with \
         `cargo run --bin crm-api -- openapi > openapi.yaml` (or UPDATE_OPENAPI=1 cargo test -p crm-api --test openapi)"
    );
}

#[test]
fn every_route_is_documented_with_its_problem_codes() {
    let doc = crm_api::openapi::document();
    let paths: Vec<&String> = doc.paths.paths.keys().collect();
    for expected in [
        "/v1/customers",
        "/v1/customers/{id}",
        "/v1/customers/{id}/engagements",
        "/v1/engagements",
        "/v1/engagements/batch",
        "/v1/devices",
        "/v1/devices/{id}",
        "/v1/calls/incoming",
        "/v1/mobile/events",
        "/v1/mobile/caller-id",
    ] {
        assert!(
            paths.iter().any(|p| p.as_str() == expected),
            "{expected} missing from {paths:?}"
        );
    }
    let yaml = crm_api::openapi::yaml().unwrap();
    for code in [
        "validation_failed",
        "identifiers_conflict",
        "customer_not_found",
        "payload_too_large",
    ] {
        assert!(yaml.contains(code), "problem code {code} is not documented");
    }
}
