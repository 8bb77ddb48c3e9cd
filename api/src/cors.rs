//! `CRM_CORS_ORIGINS`: the origins of front ends served elsewhere that may
//! call the API from a browser. Nothing is allowed unless listed; the
//! console served at `/` needs none (it is the API's own origin).
//!
//! Requests carry bearer tokens, never cookies, so no credentials mode is
//! offered. A preflight from a listed origin is answered `200` with the
//! methods and headers the API uses.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// One allowed origin, `scheme://host[:port]`, as browsers send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsOrigin(HeaderValue);

impl std::str::FromStr for CorsOrigin {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let bad = || format!("{raw:?} is not an origin such as https://crm.example.com");
        let url = url::Url::parse(raw).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
        {
            return Err(bad());
        }
        let origin = url.origin().ascii_serialization();
        HeaderValue::from_str(&origin)
            .map(CorsOrigin)
            .map_err(|_| bad())
    }
}

/// The layer for these origins; `None` when there are none.
pub fn layer(origins: &[CorsOrigin]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins.iter().map(|o| o.0.clone()).collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::LOCATION,
                header::ETAG,
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port() {
        let ok: CorsOrigin = "https://crm.example.com"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.0, "https://crm.example.com");
        let port: CorsOrigin = "http://localhost:3000/"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(port.0, "http://localhost:3000");
        for bad in [
            "*",
            "crm.example.com",
            "https://crm.example.com/app",
            "ftp://crm.example.com",
            "https://crm.example.com?x=1",
            "https://user@crm.example.com",
        ] {
            assert!(bad.parse::<CorsOrigin>().is_err(), "{bad} accepted");
        }
    }
}
