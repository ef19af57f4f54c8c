//! The browser UI: the Vite bundle from `ui/dist`, embedded at compile time (see `build.rs`),
//! served at `/ui`.
//!
//! Invariants:
//! - Static assets need no token on the TCP listener (`listen::is_public_path`); the UI talks
//!   to the API under `/v1` with the token the user signs in with, like any other client.
//! - `/ui` redirects to `/ui/`; an existing file is served with its content type; a missing
//!   path without a file extension is a client-side route and gets `index.html` (SPA
//!   fallback); a missing path with an extension is `404`, so a broken asset link fails
//!   visibly instead of parsing HTML as script.
//! - Hashed files under `assets/` are cached for a year; `index.html` must be revalidated, so
//!   a new daemon's UI is picked up on reload.
//! - Every response carries a Content-Security-Policy that only allows this origin: the UI
//!   makes no external requests.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// The bundle (or the build script's placeholder page).
#[derive(rust_embed::RustEmbed)]
#[folder = "$VIREO_UI_DIST"]
struct Bundle;

/// Path prefix the UI is served under (Vite's `base` is `/ui/`).
pub const PREFIX: &str = "/ui";

const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
style-src 'self' 'unsafe-inline'; font-src 'self' data:; object-src 'none'; \
base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// Whether the TCP listener serves `path` without a token: the UI's static files only.
pub fn is_public_path(path: &str) -> bool {
    path == PREFIX || path.starts_with("/ui/")
}

/// Routes for `/ui` and everything under it.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(PREFIX, get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { serve("") }))
        .route(
            "/ui/{*path}",
            get(|axum::extract::Path(p): axum::extract::Path<String>| async move { serve(&p) }),
        )
}

/// What to answer for `/ui/<path>`.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// Serve this bundle file.
    File(String),
    /// Nothing there.
    NotFound,
}

/// Resolves a request path against the bundle's file list (pure; `exists` says whether the
/// bundle has a file).
fn resolve(path: &str, exists: impl Fn(&str) -> bool) -> Lookup {
    let path = path.trim_start_matches('/');
    if path.is_empty() {
        return Lookup::File("index.html".into());
    }
    // The bundle has no such names; refuse them before any lookup.
    if path
        .split('/')
        .any(|seg| seg == ".." || seg == "." || seg.is_empty())
    {
        return Lookup::NotFound;
    }
    if exists(path) {
        return Lookup::File(path.to_string());
    }
    let last = path.rsplit('/').next().unwrap_or(path);
    if last.contains('.') {
        Lookup::NotFound
    } else {
        Lookup::File("index.html".into())
    }
}

/// Content type by file extension (the bundle holds only these kinds of files).
fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `Cache-Control` for a bundle file: content-hashed assets never change under their name.
fn cache_control(path: &str) -> &'static str {
    if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
}

fn serve(path: &str) -> Response {
    let file = match resolve(path, |p| Bundle::get(p).is_some()) {
        Lookup::File(f) => f,
        Lookup::NotFound => {
            return (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "not found\n",
            )
                .into_response();
        }
    };
    let Some(content) = Bundle::get(&file) else {
        // Only when the bundle has no index.html, which build.rs rules out.
        tracing::error!(file, "UI bundle file missing");
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let mut resp = content.data.into_owned().into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&file)),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control(&file)),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(p: &str) -> bool {
        matches!(p, "index.html" | "assets/index-abc.js" | "favicon.svg")
    }

    #[test]
    fn resolves_files_routes_and_missing_assets() {
        assert_eq!(resolve("", bundle), Lookup::File("index.html".into()));
        assert_eq!(
            resolve("assets/index-abc.js", bundle),
            Lookup::File("assets/index-abc.js".into())
        );
        assert_eq!(
            resolve("favicon.svg", bundle),
            Lookup::File("favicon.svg".into())
        );
        // Client-side routes fall back to the app.
        assert_eq!(
            resolve("vms/web1", bundle),
            Lookup::File("index.html".into())
        );
        assert_eq!(
            resolve("operations", bundle),
            Lookup::File("index.html".into())
        );
        // A missing asset is a 404, not HTML.
        assert_eq!(resolve("assets/gone-123.js", bundle), Lookup::NotFound);
        assert_eq!(resolve("../Cargo.toml", bundle), Lookup::NotFound);
        assert_eq!(resolve("assets//index-abc.js", bundle), Lookup::NotFound);
        assert_eq!(resolve("a/./b", bundle), Lookup::NotFound);
    }

    #[test]
    fn only_ui_paths_are_public() {
        assert!(is_public_path("/ui"));
        assert!(is_public_path("/ui/"));
        assert!(is_public_path("/ui/assets/a.js"));
        assert!(!is_public_path("/uix"));
        assert!(!is_public_path("/v1/vms"));
        assert!(!is_public_path("/"));
        assert!(!is_public_path("/metrics"));
    }

    #[test]
    fn content_types_and_caching() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/a.JS"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("assets/a.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
        assert_eq!(
            cache_control("assets/a-1.js"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(cache_control("index.html"), "no-cache");
    }

    #[tokio::test]
    async fn serves_the_embedded_index_with_headers() {
        use tower::ServiceExt;
        let app: Router = router();
        let req = axum::http::Request::get("/ui/vms/x")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'self'"));
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("<html"));

        let req = axum::http::Request::get("/ui")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(resp.headers()[header::LOCATION], "/ui/");

        let req = axum::http::Request::get("/ui/assets/missing-1.js")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(
            app.oneshot(req).await.unwrap().status(),
            StatusCode::NOT_FOUND
        );
    }
}
