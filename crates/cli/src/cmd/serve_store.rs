//! `thinnode serve-store`: serve a dir store over HTTP (read-only), in the layout `http(s)://` stores read
//! (`/ab/<64 hex digits>`), with caching headers: objects are content-addressed, so they never change.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use store::{ChunkId, ChunkStore, DirStore};

/// Arguments of `thinnode serve-store`.
#[derive(clap::Args)]
pub struct Args {
    /// The dir store's directory (what `dir://DIR` names).
    dir: PathBuf,
    /// Address to listen on (e.g. 127.0.0.1:8080 or [::]:80).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Threads answering requests.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

/// `Cache-Control` of every object: content-addressed objects never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The chunk id a request path names: `/ab/<64 hex>` where `ab` are the id's first two digits.
fn id_of_path(path: &str) -> Option<ChunkId> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let (fan_out, hex) = path.strip_prefix('/')?.split_once('/')?;
    if hex.len() != 64 || !hex.starts_with(fan_out) || fan_out.len() != 2 {
        return None;
    }
    if hex.bytes().any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    ChunkId::from_hex(hex).ok()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn answer(store: Arc<DirStore>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let Some(id) = id_of_path(request.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "not a chunk path (/ab/<64 hex>)\n");
    };
    let etag = format!("\"{}\"", id.to_hex());
    let not_modified = request
        .headers()
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    let found = tokio::task::spawn_blocking(move || store.get(&id)).await;
    let data = match found {
        Ok(Ok(Some(data))) => data,
        Ok(Ok(None)) => return text(StatusCode::NOT_FOUND, "no such chunk\n"),
        Ok(Err(e)) => {
            tracing::warn!("reading chunk {id}: {e}");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "store read failed\n");
        }
        Err(e) => {
            tracing::warn!("reading chunk {id}: {e}");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "store read failed\n");
        }
    };
    // Range requests are ignored: the answer is always the whole object with its length.
    let mut response = if not_modified {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Full::new(Bytes::from(data)))
    };
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    headers.insert(
        hyper::header::ACCEPT_RANGES,
        HeaderValue::from_static("none"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, v);
    }
    response
}

/// Runs `thinnode serve-store` until killed.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.dir.is_dir(),
        "{} is not a directory (the dir store to serve)",
        args.dir.display()
    );
    let store = Arc::new(
        DirStore::open(&args.dir).with_context(|| format!("opening {}", args.dir.display()))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr().context("local address")?;
        eprintln!(
            "serving {} at http://{addr}/ (read-only)",
            args.dir.display()
        );
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let store = store.clone();
                    async move { Ok::<_, Infallible>(answer(store, request).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("connection from {peer}: {e}");
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fan_out_paths_of_lower_case_ids_name_chunks() {
        let hex = "3f".to_string() + &"a".repeat(62);
        assert_eq!(
            id_of_path(&format!("/3f/{hex}")).map(|id| id.to_hex()),
            Some(hex.clone())
        );
        assert!(id_of_path(&format!("/3f/{hex}?x=1")).is_some());
        for bad in [
            format!("/3e/{hex}"),
            format!("/{hex}"),
            format!("/3f/{}", hex.to_uppercase()),
            format!("/3f/{hex}/x"),
            "/3f/..".to_string(),
            "/".to_string(),
        ] {
            assert!(id_of_path(&bad).is_none(), "{bad}");
        }
    }
}
