//! The HTTP side: GET /metrics (Prometheus), /healthz, /flows (JSON; `?state=stalled`,
//! `?class=ctcp`, `?limit=N`).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::daemon::Shared;
use crate::flows::FlowReport;

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/flows", get(flows))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        log::error!("HTTP server: {e}");
    }
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

async fn flows(
    State(s): State<Arc<Shared>>,
    Query(q): Query<FlowQuery>,
) -> Result<Json<Vec<FlowReport>>, (StatusCode, String)> {
    let table = s
        .probe
        .lock()
        .unwrap()
        .flows()
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let episodes = s.episodes.lock().unwrap();
    let now = crate::flows::monotonic_now();
    let mut out: Vec<FlowReport> = table
        .iter()
        .map(|(k, f)| {
            let mut r =
                FlowReport::new(k, f, episodes.get(k).cloned().unwrap_or_default(), s.offset);
            r.age_ms = Some(now.saturating_sub(f.first_ts) / 1_000_000);
            r.idle_ms = Some(now.saturating_sub(f.last_ts) / 1_000_000);
            r
        })
        .filter(|r| q.state.as_deref().is_none_or(|st| r.state == st))
        .filter(|r| q.class.as_deref().is_none_or(|c| r.class == c))
        .collect();
    out.truncate(q.limit.unwrap_or(usize::MAX));
    Ok(Json(out))
}
