//! The sales staff's console: a page and a few small ES modules under
//! `api/console/`, embedded in the binary and served at `/` and `/assets/`.
//!
//! Nothing is fetched from elsewhere and nothing is built: the files are
//! served as they are in the repository. Each is gzipped once when the
//! router is made (when that makes it smaller) and sent gzipped to clients
//! that accept it. Every answer carries a strong `ETag` (a hash of the
//! file), so a browser revalidates with `If-None-Match` and gets `304`.
//! The console talks to the JSON API on the same origin; its pages send a
//! Content-Security-Policy that allows scripts, styles and connections to
//! this origin only, no inline script, and no framing.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorCode};

#[derive(rust_embed::Embed)]
#[folder = "console/"]
struct Files;

/// The policy of every console answer: this origin only, no inline script,
/// never in a frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file, ready to send.
struct Asset {
    content_type: &'static str,
    /// The quoted hash of the file, the same for both encodings' base.
    etag: String,
    plain: Vec<u8>,
    /// Present when gzip makes the file smaller.
    gzip: Option<Vec<u8>>,
}

/// Every embedded file by its path under `api/console/`.
struct Assets(HashMap<String, Asset>);

impl Assets {
    fn load() -> Self {
        let mut assets = HashMap::new();
        for path in Files::iter() {
            let Some(file) = Files::get(&path) else {
                continue;
            };
            let plain = file.data.into_owned();
            let hash = Sha256::digest(&plain);
            let etag = format!("\"{}\"", hex::encode(&hash[..12]));
            let gzip = gzip(&plain).filter(|g| g.len() < plain.len());
            assets.insert(
                path.to_string(),
                Asset {
                    content_type: content_type(&path),
                    etag,
                    plain,
                    gzip,
                },
            );
        }
        Assets(assets)
    }
}

fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).ok()?;
    encoder.finish().ok()
}

/// The content types of what `api/console/` holds; anything else is sent
/// as bytes (and `nosniff` keeps browsers from guessing).
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `/` (the page) and `/assets/{path}` (its scripts, styles and icons).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let assets = Arc::new(Assets::load());
    Router::new()
        .route("/", get(index))
        .route("/assets/{*path}", get(asset))
        .with_state(assets)
}

async fn index(State(assets): State<Arc<Assets>>, headers: HeaderMap) -> Response {
    serve(&assets, "index.html", &headers)
}

async fn asset(
    State(assets): State<Arc<Assets>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    // The page is served at `/` only.
    if path == "index.html" {
        return not_found();
    }
    serve(&assets, &path, &headers)
}

fn not_found() -> Response {
    ApiError::not_found(ErrorCode::RouteNotFound, "no such route").into_response()
}

fn serve(assets: &Assets, path: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = assets.0.get(path) else {
        return not_found();
    };
    let gzipped = asset.gzip.as_ref().filter(|_| accepts_gzip(headers));
    let etag = match gzipped {
        // A representation of its own: a cache must not hand gzip to a
        // client that did not ask for it under the same tag.
        Some(_) => format!("{}-gzip\"", asset.etag.trim_end_matches('"')),
        None => asset.etag.clone(),
    };
    let mut response = if matches_etag(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = gzipped.unwrap_or(&asset.plain).clone();
        let mut response = body.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        if gzipped.is_some() {
            response
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    };
    let out = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, etag);
    }
    // File names carry no hash: revalidate every time (a 304 is cheap).
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    security_headers(out);
    response
}

/// The headers every console answer carries.
fn security_headers(out: &mut HeaderMap) {
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    out.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    out.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

/// Whether `Accept-Encoding` lists gzip (or `*`) without `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// Whether `If-None-Match` names this tag (or `*`); weak tags compare too.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn gzip_is_accepted_unless_refused() {
        assert!(accepts_gzip(&headers(
            header::ACCEPT_ENCODING,
            "gzip, deflate, br"
        )));
        assert!(accepts_gzip(&headers(header::ACCEPT_ENCODING, "br;q=1, *")));
        assert!(!accepts_gzip(&headers(header::ACCEPT_ENCODING, "gzip;q=0")));
        assert!(!accepts_gzip(&headers(header::ACCEPT_ENCODING, "br")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn etags_match_in_lists_and_weakly() {
        let h = headers(header::IF_NONE_MATCH, "\"x\", W/\"abc\"");
        assert!(matches_etag(&h, "\"abc\""));
        assert!(!matches_etag(&h, "\"abd\""));
        assert!(matches_etag(&headers(header::IF_NONE_MATCH, "*"), "\"q\""));
    }

    #[test]
    fn every_file_has_a_known_type() {
        let assets = Assets::load();
        assert!(assets.0.contains_key("index.html"));
        for (path, asset) in &assets.0 {
            assert_ne!(
                asset.content_type, "application/octet-stream",
                "{path} has no content type"
            );
        }
    }
}
