//! The demo's static files: precompressed variants chosen by
//! `Accept-Encoding`, immutable caching of content-hashed names only,
//! ETag revalidation, `HEAD` like `GET`, the favicon. Served from a fixture
//! build in a temp dir (whose variants differ in content, so the test sees
//! which one was sent); `tests/browser.rs` serves the real build.

use std::path::Path;

use crate::common::server;
use crate::http::request;

const HASHED: &str = "widget-2YYKM2HI.js";

/// A built demo in miniature: the plain bundle and distinguishable
/// `.br` / `.gz` variants (not real compressed data: the server never
/// decodes them).
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let assets = dir.path().join("assets");
    std::fs::create_dir_all(&assets).unwrap();
    let write = |p: &Path, s: &[u8]| std::fs::write(p, s).unwrap();
    write(
        &dir.path().join("index.html"),
        b"<!doctype html><title>demo</title>",
    );
    write(&dir.path().join("index.html.gz"), b"GZ-INDEX");
    write(&dir.path().join("favicon.ico"), b"\0\0\x01\0ICON");
    write(&assets.join(HASHED), b"PLAIN-WIDGET");
    write(&assets.join(format!("{HASHED}.br")), b"BR-WIDGET");
    write(&assets.join(format!("{HASHED}.gz")), b"GZ-WIDGET");
    write(
        &assets.join("widget.js"),
        format!("export * from './{HASHED}';\n").as_bytes(),
    );
    dir
}

#[tokio::test]
async fn assets_are_precompressed_hashed_immutable_and_head_answers_like_get() {
    let dir = fixture();
    let root = dir.path().to_path_buf();
    let srv = server(|c| c.demo_dir = root);
    let url = format!("/assets/{HASHED}");

    // brotli preferred, gzip next, the plain file for anyone else.
    for (accept, body, encoding) in [
        ("gzip, deflate, br", "BR-WIDGET", Some("br")),
        ("gzip", "GZ-WIDGET", Some("gzip")),
        ("br;q=0, gzip;q=0.5", "GZ-WIDGET", Some("gzip")),
        ("*", "BR-WIDGET", Some("br")),
        ("identity", "PLAIN-WIDGET", None),
        ("", "PLAIN-WIDGET", None),
    ] {
        let headers: Vec<(&str, &str)> = if accept.is_empty() {
            vec![]
        } else {
            vec![("Accept-Encoding", accept)]
        };
        let r = request(srv.addr, "GET", &url, &headers, b"").await;
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(String::from_utf8_lossy(&r.body), body, "{accept}");
        assert_eq!(r.header("content-encoding"), encoding, "{accept}");
        assert_eq!(r.header("vary"), Some("accept-encoding"), "{accept}");
        assert_eq!(
            r.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "hashed names are immutable"
        );
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    }

    // HEAD: the same status and headers, no body.
    let get = request(srv.addr, "GET", &url, &[("Accept-Encoding", "br")], b"").await;
    let head = request(srv.addr, "HEAD", &url, &[("Accept-Encoding", "br")], b"").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body");
    for h in [
        "content-type",
        "content-encoding",
        "cache-control",
        "vary",
        "etag",
        "content-length",
    ] {
        assert_eq!(head.header(h), get.header(h), "{h}");
    }
    assert_eq!(head.header("content-length"), Some("9"));

    // The stable entry and the page are revalidated, not cached for a year.
    for path in ["/assets/widget.js", "/"] {
        let r = request(srv.addr, "GET", path, &[("Accept-Encoding", "gzip")], b"").await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
        let etag = r.header("etag").expect("etag").to_owned();
        let again = request(
            srv.addr,
            "GET",
            path,
            &[("Accept-Encoding", "gzip"), ("If-None-Match", &etag)],
            b"",
        )
        .await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
        let head = request(srv.addr, "HEAD", path, &[], b"").await;
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty());
    }
    let index = request(srv.addr, "GET", "/", &[("Accept-Encoding", "gzip")], b"").await;
    assert_eq!(index.body, b"GZ-INDEX");
    assert_eq!(index.header("content-encoding"), Some("gzip"));
    let entry = request(srv.addr, "GET", "/assets/widget.js", &[], b"").await;
    assert!(String::from_utf8_lossy(&entry.body).contains(HASHED));

    // The favicon, and 404 (not 503) for what a build does not have.
    let icon = request(srv.addr, "GET", "/favicon.ico", &[], b"").await;
    assert_eq!(icon.status, 200);
    assert_eq!(icon.header("content-type"), Some("image/x-icon"));
    assert!(icon.body.starts_with(b"\0\0\x01\0"));
    assert_eq!(
        request(srv.addr, "HEAD", "/favicon.ico", &[], b"")
            .await
            .status,
        200
    );
    for path in [
        "/favicon.svg",
        "/assets/nope-2YYKM2HI.js",
        "/assets/../index.html",
    ] {
        let r = request(srv.addr, "GET", path, &[("Accept-Encoding", "br")], b"").await;
        assert_eq!(r.status, 404, "{path}");
    }
}
