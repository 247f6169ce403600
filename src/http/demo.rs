//! The browser demo (chat + collaborative editor): static files built by
//! `demo/scripts/build.mjs` into `Config::demo_dir`, served at `/` (the page)
//! and `/assets/*` (its bundles, also loadable cross-origin by the
//! `<script type=module>` embed). A missing build answers 503 with the
//! command that makes it; nothing here can panic on a request.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::session::Shared;

/// `GET /`: the demo page (the room comes from `?room=` on the client side).
pub async fn index(shared: web::Data<Shared>) -> HttpResponse {
    let dir = shared.config.demo_dir.clone();
    serve(&dir, dir.join("index.html"), "index.html").await
}

/// `GET /assets/{path}`: a file of the built demo.
pub async fn asset(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let rel = req.match_info().query("path");
    let Some(path) = safe_join(&shared.config.demo_dir.join("assets"), rel) else {
        return not_found();
    };
    let mut response = serve(&shared.config.demo_dir, path, rel).await;
    if response.status().is_success() {
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::HeaderValue::from_static("*"),
        );
    }
    response
}

/// `base/rel` when `rel` is a plain relative path (no `..`, no absolute
/// parts, no hidden files), else `None`.
fn safe_join(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = base.to_path_buf();
    for part in rel.split('/') {
        let ok = !part.is_empty()
            && !part.starts_with('.')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !ok {
            return None;
        }
        out.push(part);
    }
    Some(out)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" | "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

async fn serve(dir: &Path, path: PathBuf, name: &str) -> HttpResponse {
    let read = web::block(move || std::fs::read(path)).await;
    match read {
        Ok(Ok(bytes)) => HttpResponse::Ok()
            .content_type(content_type(name))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(bytes),
        Ok(Err(e)) if e.kind() == ErrorKind::NotFound => {
            if dir.join("index.html").is_file() {
                not_found()
            } else {
                not_built(dir)
            }
        }
        Ok(Err(e)) => {
            tracing::error!("reading demo file {name:?} failed: {e}");
            HttpResponse::InternalServerError()
                .content_type("text/plain; charset=utf-8")
                .body("could not read the demo file\n")
        }
        Err(e) => {
            tracing::error!("demo file reader failed: {e}");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body("server busy\n")
        }
    }
}

fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .content_type("text/plain; charset=utf-8")
        .body("not found\n")
}

fn not_built(dir: &Path) -> HttpResponse {
    let dir = html_escape(&dir.display().to_string());
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>Chorus: demo not built</title>\
         <body style=\"font:16px system-ui;max-width:40em;margin:4em auto;padding:0 1em\">\
         <h1>The Chorus demo is not built</h1>\
         <p>No built demo in <code>{dir}</code>. From the repository root run</p>\
         <pre>npm --prefix demo start</pre>\
         <p>(installs, builds and starts the server), or build only with \
         <code>npm --prefix demo run build</code> and restart; or point \
         <code>--demo-dir</code> / <code>CHORUS_DEMO_DIR</code> at a built demo.</p>\
         <p>The WebSocket API at <code>/ws</code> works without it.</p>"
    );
    HttpResponse::ServiceUnavailable()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_refuses_escapes() {
        let base = Path::new("/d");
        assert_eq!(safe_join(base, "app.js"), Some(PathBuf::from("/d/app.js")));
        assert_eq!(
            safe_join(base, "x/y.css"),
            Some(PathBuf::from("/d/x/y.css"))
        );
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/abs",
            "",
            "a//b",
            ".hidden",
            "a\\b",
            "%2e%2e",
        ] {
            assert_eq!(safe_join(base, bad), None, "{bad}");
        }
    }
}
