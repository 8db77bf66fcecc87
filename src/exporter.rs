//! The HTTP endpoint of `run` when `metrics.listen` is set: `GET /metrics` (Prometheus /
//! OpenMetrics text, encoded by `prometheus-client` from [`crate::metrics::Exposition`]) and
//! `GET /healthz` (200 `ok`, or 503 with a one-line reason from [`Counters::health`]).
//!
//! It runs on its own thread with a current-thread tokio runtime, so the async code stays at
//! this edge: a scrape only reads atomics, never SQLite. HTTP is hyper 1 (HTTP/1 only) rather
//! than axum, whose router and tower layers buy nothing for two fixed paths, and rather than
//! tiny_http, which would bring its own thread pool although tokio is here anyway; hyper is the
//! most used and best kept HTTP implementation in the ecosystem.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, Semaphore};

use crate::metrics::{Counters, Exposition};

/// Scrapers and probes are few; more concurrent connections than this are refused at once
/// so a misbehaving client cannot make the exporter hold unbounded sockets.
const MAX_CONNECTIONS: usize = 32;
/// A client that sends no complete request header in this time is dropped (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer than this, keep-alive included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The running endpoint; dropping it stops the server and joins its thread.
pub(crate) struct Exporter {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Binds `listen` now (so a taken port fails `run` at startup, naming the address) and
    /// serves from a new `metrics` thread.
    pub(crate) fn start(
        listen: SocketAddr,
        counters: Arc<Counters>,
        unhealthy_after: Duration,
    ) -> anyhow::Result<Exporter> {
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("metrics.listen: cannot listen on {listen}"))?;
        listener.set_nonblocking(true).context("metrics listener")?;
        let addr = listener.local_addr().context("metrics listener")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("starting the metrics runtime")?;
        let (stop, stopped) = oneshot::channel();
        let app = Arc::new(App {
            registry: Exposition::registry(counters.clone()),
            counters,
            unhealthy_after,
        });
        let thread = std::thread::Builder::new().name("metrics".into()).spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, app, stopped).await,
                    Err(error) => tracing::error!(%error, "metrics endpoint cannot start"),
                }
            });
        })?;
        tracing::info!(%addr, "serving /metrics and /healthz");
        Ok(Exporter { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct App {
    registry: Registry,
    counters: Arc<Counters>,
    unhealthy_after: Duration,
}

async fn serve(listener: tokio::net::TcpListener, app: Arc<App>, mut stop: oneshot::Receiver<()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Typically EMFILE: back off instead of spinning; the pipeline matters more.
                tracing::warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(respond(&app, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // Errors here are a client's broken connection: nothing to report.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

fn respond(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    let text = "text/plain; charset=utf-8";
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, text, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::with_capacity(8 * 1024);
            match prometheus_client::encoding::text::encode(&mut body, &app.registry) {
                Ok(()) => reply(StatusCode::OK, OPENMETRICS, body),
                Err(_) => {
                    reply(StatusCode::INTERNAL_SERVER_ERROR, text, "encoding failed\n".into())
                }
            }
        }
        "/healthz" => match app.counters.health(app.unhealthy_after) {
            Ok(()) => reply(StatusCode::OK, text, "ok\n".into()),
            Err(reason) => {
                reply(StatusCode::SERVICE_UNAVAILABLE, text, format!("unhealthy: {reason}\n"))
            }
        },
        _ => reply(StatusCode::NOT_FOUND, text, "not found; try /metrics or /healthz\n".into()),
    }
}
