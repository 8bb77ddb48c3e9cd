//! `http_requests_total` and `http_request_duration_seconds`, labelled by
//! method, matched route and status. A plain tower service: labels are
//! static strings but for the route and the status, and nothing else is boxed or cloned
//! per request but the future.

use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use futures::future::BoxFuture;
use metrics::Label;
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy, Default)]
pub struct RequestMetricsLayer;

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestMetrics<S> {
    inner: S,
}

impl<S> Service<Request> for RequestMetrics<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let start = Instant::now();
        let path = Label::new(
            "path",
            req.extensions()
                .get::<MatchedPath>()
                .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned()),
        );
        let method = Label::new("method", method_label(req.method()));
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            let labels = vec![
                method,
                path,
                Label::new("status", response.status().as_str().to_owned()),
            ];
            metrics::counter!("http_requests_total", labels.clone()).increment(1);
            metrics::histogram!("http_request_duration_seconds", labels)
                .record(start.elapsed().as_secs_f64());
            Ok(response)
        })
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
