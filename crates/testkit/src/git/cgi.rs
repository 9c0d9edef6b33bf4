//! One HTTP request through `git http-backend`, run as a CGI program (RFC 3875): the request
//! goes in as environment variables and stdin, the response comes out of stdout as CGI
//! headers, a blank line and the body. Choosing which repositories exist is left to the server.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, bail};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::hermetic_env;

/// Request headers `git http-backend` reads, with the CGI variables they become.
const FORWARDED_HEADERS: [(&str, &str); 3] = [
    ("content-type", "CONTENT_TYPE"),
    // git gzips large upload-pack requests and says so here.
    ("content-encoding", "HTTP_CONTENT_ENCODING"),
    // Carries `version=2`, which switches the backend to protocol v2.
    ("git-protocol", "GIT_PROTOCOL"),
];

/// Runs `git http-backend` for one request against the repositories under `project_root`.
pub(super) async fn run(
    project_root: &Path,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> anyhow::Result<Response> {
    let mut command = Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .envs(hermetic_env(project_root))
        .envs(cgi_env(project_root, method, uri, headers, body.len()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .context("failed to start git http-backend")?;

    // Feed stdin from its own task: the backend may write a large response before it has
    // read the whole request, and a pipe blocked both ways would deadlock.
    let mut stdin = child
        .stdin
        .take()
        .context("git http-backend has no stdin pipe")?;
    let feed = tokio::spawn(async move { stdin.write_all(&body).await });
    let output = child
        .wait_with_output()
        .await
        .context("failed to run git http-backend")?;
    if let Ok(Err(error)) = feed.await {
        tracing::debug!(%error, "git http-backend stopped reading its request");
    }

    if !output.stderr.is_empty() {
        tracing::debug!(stderr = %String::from_utf8_lossy(&output.stderr), "git http-backend");
    }
    parse_response(&output.stdout)
}

fn cgi_env(
    project_root: &Path,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    content_length: usize,
) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "GIT_PROJECT_ROOT".into(),
            project_root.display().to_string(),
        ),
        ("GIT_HTTP_EXPORT_ALL".into(), "1".into()),
        ("REQUEST_METHOD".into(), method.to_string()),
        ("PATH_INFO".into(), uri.path().to_owned()),
        (
            "QUERY_STRING".into(),
            uri.query().unwrap_or_default().to_owned(),
        ),
        ("CONTENT_LENGTH".into(), content_length.to_string()),
        ("REMOTE_ADDR".into(), "127.0.0.1".into()),
        ("SERVER_PROTOCOL".into(), "HTTP/1.1".into()),
    ];
    for (header, variable) in FORWARDED_HEADERS {
        if let Some(value) = headers.get(header).and_then(|value| value.to_str().ok()) {
            env.push((variable.into(), value.to_owned()));
        }
    }
    env
}

/// Turns CGI output into a response: header lines up to a blank line (CRLF or LF), where
/// `Status: 404 Not Found` sets the status (200 when absent), then the body.
fn parse_response(stdout: &[u8]) -> anyhow::Result<Response> {
    let mut response = Response::new(Body::empty());
    let mut rest = stdout;
    loop {
        let Some(end) = rest.iter().position(|&byte| byte == b'\n') else {
            bail!("git http-backend ended its output inside the CGI headers");
        };
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        rest = &rest[end + 1..];
        if line.is_empty() {
            break;
        }
        apply_header(&mut response, line)?;
    }

    *response.body_mut() = Body::from(rest.to_vec());
    Ok(response)
}

fn apply_header(response: &mut Response, line: &[u8]) -> anyhow::Result<()> {
    let line = std::str::from_utf8(line).context("git http-backend wrote a non-UTF-8 header")?;
    let (name, value) = line
        .split_once(':')
        .with_context(|| format!("git http-backend wrote a header without a colon: {line:?}"))?;
    let value = value.trim();

    if name.eq_ignore_ascii_case("status") {
        let code = value.split(' ').next().unwrap_or_default();
        *response.status_mut() = StatusCode::from_bytes(code.as_bytes())
            .with_context(|| format!("git http-backend wrote a bad status: {value:?}"))?;
    } else {
        let name = HeaderName::try_from(name).context("git http-backend wrote a bad header")?;
        let value = HeaderValue::try_from(value).context("git http-backend wrote a bad value")?;
        response.headers_mut().append(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_sets_the_status_and_the_rest_is_body() {
        let out = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope\n";
        let response = parse_response(out).expect("valid CGI output");

        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["content-type"], "text/plain");
    }

    #[test]
    fn missing_status_means_ok_and_lf_lines_work() {
        let out = b"Content-Type: application/x-git-upload-pack-advertisement\n\n0000";
        let response = parse_response(out).expect("valid CGI output");

        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn output_without_blank_line_is_an_error() {
        assert!(parse_response(b"Content-Type: text/plain\r\n").is_err());
    }
}
