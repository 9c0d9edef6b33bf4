//! A static file server on loopback, standing in for the release hosts tools are downloaded
//! from. [`FileServer`] owns a fixed set of files and a hit count per path; checking what was
//! downloaded (digests, modes) is left to the caller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use crate::loopback::Loopback;

/// A running static file server on 127.0.0.1; dropping it shuts the server down.
#[derive(Debug)]
pub struct FileServer {
    server: Loopback,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    files: HashMap<String, Vec<u8>>,
    hits: Mutex<HashMap<String, usize>>,
}

impl FileServer {
    /// Serves `files`, given as (path, contents), to `GET` requests. Paths are taken relative
    /// to the root, with or without a leading `/`.
    pub async fn start(files: Vec<(String, Vec<u8>)>) -> FileServer {
        let files = files
            .into_iter()
            .map(|(path, bytes)| (normalize(&path), bytes));
        let shared = Arc::new(Shared {
            files: files.collect(),
            hits: Mutex::default(),
        });

        let router = Router::new()
            .fallback(serve)
            .with_state(Arc::clone(&shared));
        let server = Loopback::serve(router, CancellationToken::new()).await;
        FileServer { server, shared }
    }

    /// The URL of `path`, such as `http://127.0.0.1:41234/tools/ak`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.server.origin(), normalize(path))
    }

    /// How many requests asked for `path` so far, whether or not it exists.
    pub fn hits(&self, path: &str) -> usize {
        let hits = self
            .shared
            .hits
            .lock()
            .expect("no code panics holding the hit counts");
        hits.get(&normalize(path)).copied().unwrap_or(0)
    }
}

async fn serve(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let path = normalize(uri.path());
    {
        let mut hits = shared
            .hits
            .lock()
            .expect("no code panics holding the hit counts");
        *hits.entry(path.clone()).or_default() += 1;
    }

    match shared.files.get(&path) {
        Some(bytes) => {
            let content_type = [(header::CONTENT_TYPE, "application/octet-stream")];
            (content_type, bytes.clone()).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no file at /{path}\n")).into_response(),
    }
}

/// The key a path is stored and counted under: without leading slashes.
fn normalize(path: &str) -> String {
    path.trim_start_matches('/').to_owned()
}
