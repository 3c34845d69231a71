//! The HTTP side: GET /metrics (Prometheus), /healthz, /flows (JSON; `?state=stalled`,
//! `?class=ctcp`, `?limit=N`, default 1,000, at most 100,000); over TLS and behind
//! basic auth when the web config says so.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::daemon::Shared;
use crate::flows::{FlowReport, class_name, state_name};
use crate::serve::metrics::{CLASSES, STATES};
use crate::serve::web_config::BasicAuth;

/// Connections served at once; more are closed as they are accepted, so clients that
/// open many and send nothing cannot use up the agent's descriptors.
const MAX_CONNECTIONS: usize = 256;
/// A request's head must arrive within this, or the connection is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/flows", get(flows))
        .with_state(shared.clone());
    let web = shared.web.clone();
    if let Some(users) = web.as_ref().and_then(|w| w.users.clone()) {
        app = app.layer(axum::middleware::from_fn_with_state(users, basic_auth));
    }
    let tls = web.and_then(|w| w.tls.clone());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                log::warn!("HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.metrics.http_refused.inc();
            continue; // dropped: closed
        };
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                // The handshake is bounded like a request's head.
                Some(tls) => {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await
                    {
                        serve_connection(stream, app).await;
                    }
                }
                None => serve_connection(stream, app).await,
            }
            drop(slot);
        });
    }
}

async fn serve_connection<S>(stream: S, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .await;
}

/// Every path needs a user of the web config: 401 with a Basic challenge otherwise.
async fn basic_auth(
    State(users): State<Arc<BasicAuth>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if users.allows(req.headers().get(header::AUTHORIZATION)).await {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"ackwatch\"")],
        "Unauthorized\n",
    )
        .into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

#[derive(Deserialize)]
struct FlowQuery {
    state: Option<String>,
    class: Option<String>,
    limit: Option<usize>,
}

/// Flows returned when the query names no limit, and the most it may name: a response
/// stays small enough to read even when the table holds a million flows.
const DEFAULT_LIMIT: usize = 1_000;
const MAX_LIMIT: usize = 100_000;

fn bad_request(msg: String) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, msg + "\n")
}

async fn flows(
    State(s): State<Arc<Shared>>,
    Query(q): Query<FlowQuery>,
) -> Result<Json<Vec<FlowReport>>, (StatusCode, String)> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(bad_request(format!("limit: at most {MAX_LIMIT}")));
    }
    if let Some(st) = q.state.as_deref().filter(|st| !STATES.contains(st)) {
        return Err(bad_request(format!("state {st:?}: one of {STATES:?}")));
    }
    if let Some(c) = q.class.as_deref().filter(|c| !CLASSES.contains(c)) {
        return Err(bad_request(format!("class {c:?}: one of {CLASSES:?}")));
    }
    // The walk blocks on bpf(2) calls: off the runtime's threads, so /metrics and
    // /healthz answer while it runs.
    tokio::task::spawn_blocking(move || matching_flows(&s, &q, limit))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map(Json)
}

fn matching_flows(
    s: &Shared,
    q: &FlowQuery,
    limit: usize,
) -> Result<Vec<FlowReport>, (StatusCode, String)> {
    let now = crate::flows::monotonic_now();
    let mut out = Vec::new();
    let probe = s.probe.lock().unwrap();
    probe.for_each_flow(|k, f| {
        if out.len() >= limit {
            return false;
        }
        let wanted = q
            .state
            .as_deref()
            .is_none_or(|st| state_name(f.state) == st)
            && q.class.as_deref().is_none_or(|c| class_name(f.class) == c);
        if !wanted {
            return true;
        }
        let stalls = s.episodes.lock().unwrap().get(k).cloned();
        let mut r = FlowReport::new(k, f, stalls.unwrap_or_default(), s.offset);
        r.age_ms = Some(now.saturating_sub(f.first_ts) / 1_000_000);
        r.idle_ms = Some(now.saturating_sub(f.last_ts) / 1_000_000);
        out.push(r);
        true
    });
    Ok(out)
}
