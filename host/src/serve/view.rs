//! The browser view, embedded in the binary (no JavaScript build step): `/` and `/ui/…`, plus
//! the graph file the server was started with (`--graph`), which the view redraws on every
//! save.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json as AxJson, Router};
use serde_json::json;

use super::{error, Shared};

const INDEX: &str = include_str!("www/index.html");
const APP: &str = include_str!("www/app.js");
const STYLE: &str = include_str!("www/style.css");

/// The routes.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    APP,
                )
            }),
        )
        .route(
            "/ui/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        )
        .route("/api/v1/graph-file", get(graph_file))
}

/// Paths served without a token: the static page and its assets (they hold no data; every
/// API call they make carries the token).
pub fn is_public(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}

async fn graph_file(State(s): State<Arc<Shared>>) -> Response {
    let Some(path) = &s.graph_file else {
        return error(
            StatusCode::NOT_FOUND,
            "the server was started without --graph",
        );
    };
    match tokio::fs::read_to_string(path).await {
        Ok(text) => {
            AxJson(json!({"path": path.display().to_string(), "text": text})).into_response()
        }
        Err(e) => error(StatusCode::NOT_FOUND, format!("{}: {e}", path.display())),
    }
}

/// Tells the views when the graph file changes (polled: it works on every file system).
pub fn watch_graph_file(shared: Arc<Shared>) {
    let Some(path) = shared.graph_file.clone() else {
        return;
    };
    std::thread::spawn(move || {
        let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut last = stamp(&path);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            let now = stamp(&path);
            if now != last {
                last = now;
                let _ = shared.hub.send(super::events::Note::Native(
                    json!({"event": "graph_file_changed", "path": path.display().to_string()}),
                ));
            }
        }
    });
}
