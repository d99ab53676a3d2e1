//! A tower layer in front of the API client: client-side rate limiting
//! (`--kube-api-qps`, `--kube-api-burst`, a token bucket as in client-go) and
//! a count of every request by the RBAC rule it needs and its status code,
//! and the User-Agent that names csi-fencer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::{Instant, Sleep};

use super::api::classify;
use crate::daemon::metrics::Metrics;

/// The User-Agent of every request: `csi-fencer/VERSION`.
pub const USER_AGENT: &str = concat!("csi-fencer/", env!("CARGO_PKG_VERSION"));

/// Token bucket settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sustained requests per second (> 0).
    pub qps: f64,
    /// Requests allowed at once after a quiet period (>= 1).
    pub burst: u32,
}

/// The layer.
#[derive(Clone)]
pub struct GateLayer {
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl GateLayer {
    /// A gate with `limits`, counting into `metrics`.
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Self {
        GateLayer { limits, metrics }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;
    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            limits: self.limits,
            tokens: f64::from(self.limits.burst.max(1)),
            stamp: Instant::now(),
            wait: None,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service: waits for a token in `poll_ready`, counts in `call`.
pub struct Gate<S> {
    inner: S,
    limits: Limits,
    tokens: f64,
    stamp: Instant,
    wait: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

impl<S> Gate<S> {
    fn refill(&mut self) {
        let now = Instant::now();
        let burst = f64::from(self.limits.burst.max(1));
        let gained = now.duration_since(self.stamp).as_secs_f64() * self.limits.qps;
        self.tokens = (self.tokens + gained).min(burst);
        self.stamp = now;
    }
}

type BoxFut<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> tower::Service<Request<B>> for Gate<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFut<Response<RB>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        loop {
            if let Some(w) = self.wait.as_mut() {
                if w.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            self.refill();
            if self.tokens >= 1.0 {
                break;
            }
            let need = (1.0 - self.tokens) / self.limits.qps.max(1e-3);
            self.wait = Some(Box::pin(tokio::time::sleep(Duration::from_secs_f64(need))));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.tokens -= 1.0;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Who is asking, in the API server's audit log and request metrics.
        req.headers_mut().insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(USER_AGENT),
        );
        let rule = classify(
            req.method().as_str(),
            req.uri().path(),
            req.uri().query().unwrap_or(""),
        );
        let metrics = Arc::clone(&self.metrics);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            if let Some((_, resource, verb)) = rule {
                let code = match &r {
                    Ok(resp) => resp.status().as_u16().to_string(),
                    Err(_) => "error".to_string(),
                };
                metrics
                    .kube_requests
                    .with_label_values(&[verb.as_str(), resource.as_str(), code.as_str()])
                    .inc();
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_requests_are_spaced_at_qps() {
        let metrics = Arc::new(Metrics::new());
        let ok = tower::service_fn(|req: Request<()>| async move {
            assert_eq!(req.headers()["user-agent"], USER_AGENT);
            Ok::<_, std::convert::Infallible>(Response::new(()))
        });
        let mut svc = GateLayer::new(Limits { qps: 2.0, burst: 3 }, metrics.clone()).layer(ok);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            let req = Request::get("/api/v1/nodes").body(()).unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
            at.push((Instant::now() - start).as_millis());
        }
        // Virtual time: three at once (the burst), then one every 500 ms.
        assert_eq!(at, [0, 0, 0, 500, 1000]);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"csi_fencer_kube_requests_total{code="200",resource="nodes",verb="list"} 5"#
            ),
            "{text}"
        );
    }
}
