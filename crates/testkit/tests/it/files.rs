//! The static file server: bytes come back unchanged and every request is counted.

use reqwest::StatusCode;
use testkit::files::FileServer;

use crate::support::http;

#[tokio::test]
async fn serves_bytes_and_counts_hits_per_path() {
    let tool = vec![0u8, 1, 2, 255];
    let files = vec![("/tools/ak".to_owned(), tool.clone())];
    let server = FileServer::start(files).await;

    for _ in 0..2 {
        let response = http()
            .get(server.url("tools/ak"))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.bytes().await.expect("body").to_vec(), tool);
    }
    assert_eq!(server.hits("/tools/ak"), 2);
    assert_eq!(server.hits("tools/ak"), 2, "leading slash does not matter");
}

#[tokio::test]
async fn missing_file_is_404_and_still_counted() {
    let server = FileServer::start(Vec::new()).await;
    let response = http()
        .get(server.url("nope"))
        .send()
        .await
        .expect("answers");

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(server.hits("nope"), 1);
}
