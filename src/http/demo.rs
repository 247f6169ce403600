//! The browser demo (chat + collaborative editor): static files built by
//! `demo/scripts/build.mjs` into `Config::demo_dir`, served at `/` (the page),
//! `/favicon.{ico,svg}` and `/assets/*` (its bundles, also loadable
//! cross-origin by the `<script type=module>` embed). A missing build answers
//! 503 with the command that makes it; nothing here can panic on a request.
//!
//! Caching and compression:
//! - content-hashed names (`name-HASH.ext`, HASH = 8 of `[A-Z0-9]`, as the
//!   build names its bundles) never change content: `cache-control: public,
//!   max-age=31536000, immutable`; everything else (the page, the stable
//!   entries `widget.js` / `chorus-client.js`, the manifest) is `no-cache`
//!   with an `ETag`, so a revalidation costs a 304;
//! - the build writes `file.br` and `file.gz` next to each text file; the
//!   variant the client accepts (`Accept-Encoding`, brotli first) is sent with
//!   `content-encoding`, always with `vary: accept-encoding`;
//! - `HEAD` answers like `GET` without the body.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::session::Shared;

/// `cache-control` of content-hashed files.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `GET /`: the demo page (the room comes from `?room=` on the client side).
pub async fn index(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let dir = shared.config.demo_dir.clone();
    serve(&req, &dir, dir.join("index.html"), "index.html").await
}

/// `GET /favicon.ico`, `GET /favicon.svg`: the icon.
pub async fn favicon(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let dir = shared.config.demo_dir.clone();
    let name = if req.path().ends_with(".svg") {
        "favicon.svg"
    } else {
        "favicon.ico"
    };
    serve(&req, &dir, dir.join(name), name).await
}

/// `GET /assets/{path}`: a file of the built demo.
pub async fn asset(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let rel = req.match_info().query("path").to_owned();
    let Some(path) = safe_join(&shared.config.demo_dir.join("assets"), &rel) else {
        return not_found();
    };
    let mut response = serve(&req, &shared.config.demo_dir, path, &rel).await;
    if response.status().is_success() || response.status().as_u16() == 304 {
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

/// True for a content-hashed file name: the part before the first `.` ends
/// in `-` and 8 characters of `[A-Z0-9]` (esbuild's `[name]-[hash]`).
fn is_hashed(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    let stem = file.split('.').next().unwrap_or("");
    match stem.rsplit_once('-') {
        Some((base, hash)) => {
            !base.is_empty()
                && hash.len() == 8
                && hash
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                // A word in capitals is not a hash: one digit at least.
                && hash.bytes().any(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// The precompressed variants the client accepts, best first: `br`, then
/// `gzip` (an `Accept-Encoding` entry with `q=0` refuses it; `*` accepts both).
fn accepted_encodings(req: &HttpRequest) -> Vec<&'static str> {
    let mut br = None;
    let mut gzip = None;
    let mut star = None;
    for value in req.headers().get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").map(str::trim))
                .filter_map(|q| q.parse::<f32>().ok())
                .next_back()
                .unwrap_or(1.0);
            let ok = q > 0.0;
            match coding.as_str() {
                "br" => br = Some(ok),
                "gzip" | "x-gzip" => gzip = Some(ok),
                "*" => star = Some(ok),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    if br.or(star).unwrap_or(false) {
        out.push("br");
    }
    if gzip.or(star).unwrap_or(false) {
        out.push("gzip");
    }
    out
}

/// A file read for a response: its bytes, the encoding of the variant
/// read (`None` for the plain file) and a validator.
struct Read {
    bytes: Vec<u8>,
    encoding: Option<&'static str>,
    etag: String,
}

/// Reads the best accepted variant of `path` (`path.br`, `path.gz`, `path`).
fn read_variant(path: &Path, encodings: &[&'static str]) -> std::io::Result<Read> {
    for &encoding in encodings {
        let ext = if encoding == "br" { "br" } else { "gz" };
        let mut name = path.as_os_str().to_owned();
        name.push(".");
        name.push(ext);
        match read_with_tag(Path::new(&name)) {
            Ok((bytes, etag)) => {
                return Ok(Read {
                    bytes,
                    encoding: Some(encoding),
                    etag: format!("\"{etag}-{ext}\""),
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    let (bytes, etag) = read_with_tag(path)?;
    Ok(Read {
        bytes,
        encoding: None,
        etag: format!("\"{etag}\""),
    })
}

/// The file's bytes and a tag from its length and modification time.
fn read_with_tag(path: &Path) -> std::io::Result<(Vec<u8>, String)> {
    let bytes = std::fs::read(path)?;
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let tag = format!("{:x}-{modified:x}", bytes.len());
    Ok((bytes, tag))
}

async fn serve(req: &HttpRequest, dir: &Path, path: PathBuf, name: &str) -> HttpResponse {
    let encodings = accepted_encodings(req);
    let read = web::block(move || read_variant(&path, &encodings)).await;
    let cache = if is_hashed(name) {
        IMMUTABLE
    } else {
        "no-cache"
    };
    match read {
        Ok(Ok(file)) => {
            let fresh = req
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(',')
                        .any(|t| t.trim() == file.etag || t.trim() == "*")
                });
            let mut response = if fresh {
                HttpResponse::NotModified()
            } else {
                HttpResponse::Ok()
            };
            response
                .insert_header((header::CACHE_CONTROL, cache))
                .insert_header((header::VARY, "accept-encoding"))
                .insert_header((header::ETAG, file.etag));
            if fresh {
                return response.finish();
            }
            if let Some(encoding) = file.encoding {
                response.insert_header((header::CONTENT_ENCODING, encoding));
            }
            response.content_type(content_type(name)).body(file.bytes)
        }
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
    fn hashed_names_are_recognised() {
        for yes in [
            "widget-2YYKM2HI.js",
            "x/page-GOZ7QRPD.js.map",
            "a-b-ABCDEF12.css",
        ] {
            assert!(is_hashed(yes), "{yes}");
        }
        for no in [
            "widget.js",
            "manifest.json",
            "embed-example.html",
            "-2YYKM2HI.js",
            "widget-2YYKM2H.js",
            "widget-2yykm2hi.js",
            "READ-MEFILEAB.txt",
            "index.html",
        ] {
            assert!(!is_hashed(no), "{no}");
        }
    }

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
