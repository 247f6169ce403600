//! y-sweet's document API (HTTP): a room's document is created with
//! `POST /doc/new`, and `POST /doc/{id}/auth` hands out the y-websocket URL
//! (and token) its clients connect to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Creates the document of every room in `rooms` at y-sweet's HTTP `base`
/// (at most `concurrency` requests at once, 64 at most) and returns each
/// room's WebSocket URL.
pub async fn client_urls(
    base: &str,
    rooms: &[String],
    concurrency: usize,
) -> Result<HashMap<String, String>> {
    // reqwest's rustls (enabled by the server's features in this
    // workspace) needs a process-wide provider; an error means one is set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Loopback only: no proxy from the environment.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .context("HTTP client")?;
    let base = base.trim_end_matches('/').to_string();
    let sem = Arc::new(Semaphore::new(concurrency.clamp(1, 64)));
    let mut tasks = Vec::new();
    for room in rooms {
        let (http, base, room, sem) = (http.clone(), base.clone(), room.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            post(&http, &base, "/doc/new", &json!({ "docId": room })).await?;
            let auth: Value = post(&http, &base, &format!("/doc/{room}/auth"), &json!({}))
                .await?
                .json()
                .await
                .context("y-sweet auth reply")?;
            let url = auth["url"]
                .as_str()
                .ok_or_else(|| anyhow!("y-sweet auth reply has no url: {auth}"))?;
            let mut url = format!("{}/{}", url.trim_end_matches('/'), room);
            if let Some(token) = auth["token"].as_str() {
                url.push_str(&format!("?token={token}"));
            }
            anyhow::Ok((room, url))
        }));
    }
    let mut urls = HashMap::new();
    for t in tasks {
        let (room, url) = t.await??;
        urls.insert(room, url);
    }
    Ok(urls)
}

/// `POST {base}{path}` with a JSON body; a reply other than 2xx is an error.
async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: &Value,
) -> Result<reqwest::Response> {
    let reply = http
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {path}"))?;
    let status = reply.status();
    if !status.is_success() {
        bail!("POST {path}: {status}");
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{web, App, HttpResponse, HttpServer};

    /// Against a stand-in for y-sweet's API on port 0: every room's
    /// document is created before its auth request, the URL joins the
    /// handed-out base, the room and the token; a refused auth fails.
    #[actix_web::test]
    async fn rooms_get_the_urls_the_document_api_hands_out() {
        let created = web::Data::new(std::sync::Mutex::new(Vec::<String>::new()));
        let state = created.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route(
                    "/doc/new",
                    web::post().to(
                        |body: web::Json<Value>,
                         created: web::Data<std::sync::Mutex<Vec<String>>>| async move {
                            let id = body["docId"].as_str().unwrap_or_default().to_string();
                            created.lock().unwrap().push(id.clone());
                            HttpResponse::Ok().json(json!({ "docId": id }))
                        },
                    ),
                )
                .route(
                    "/doc/{id}/auth",
                    web::post().to(
                        |id: web::Path<String>,
                         created: web::Data<std::sync::Mutex<Vec<String>>>| async move {
                            let known = created.lock().unwrap().contains(&id);
                            if id.as_str() == "refused" || !known {
                                return HttpResponse::Forbidden().finish();
                            }
                            HttpResponse::Ok().json(json!({
                                "url": "ws://127.0.0.1:9/d/",
                                "token": format!("t-{id}"),
                            }))
                        },
                    ),
                )
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let base = format!("http://{}/", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);

        let rooms = ["a".to_string(), "b".to_string()];
        let urls = client_urls(&base, &rooms, 4).await.unwrap();
        assert_eq!(urls.len(), 2);
        assert_eq!(urls["a"], "ws://127.0.0.1:9/d/a?token=t-a");
        assert_eq!(urls["b"], "ws://127.0.0.1:9/d/b?token=t-b");
        let refused = client_urls(&base, &["refused".to_string()], 4).await;
        let err = format!("{:#}", refused.unwrap_err());
        assert!(err.contains("POST /doc/refused/auth: 403"), "{err}");
        handle.stop(false).await;
    }
}
