//! `headless-bridge fetch`: one tool, fetched the way a run fetches it (URL policy, mirrors,
//! the last good URL first, resume, retries, the content-addressed cache), then copied to
//! `--output`. The sha256 is optional here, unlike in runs; without it the file is still
//! cached under its digest, which is printed for pinning.
//!
//! On success it prints one line of JSON: `path`, `sha256`, `size`, `from` (the URL, or null
//! for a cache hit). Exit codes: 0 done; 2 invalid arguments or settings (a URL the policy
//! refuses, a malformed digest); 3 checksum mismatch; 4 download failed (HTTP error, HTML
//! page, size or time limit, network); 1 a local failure (disk).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use headless_bridge::config::RawConfig;
use headless_bridge::digest::Sha256Digest;
use headless_bridge::error_chain;
use headless_bridge::fetch::{FetchError, Fetcher, ToolSource};
use headless_bridge::policy::UrlPolicy;

/// Arguments of `fetch`.
#[derive(Args)]
pub struct FetchArgs {
    /// The tool's URL.
    url: String,
    /// Another URL with the same bytes; may be repeated.
    #[arg(long = "mirror", value_name = "URL")]
    mirrors: Vec<String>,
    /// The expected digest: sha256:<64 hex> or the hex alone.
    #[arg(long, value_name = "DIGEST")]
    sha256: Option<String>,
    /// The tool's name, under which the last good URL is remembered [default: the URL's file name].
    #[arg(long)]
    name: Option<String>,
    /// Where to write the tool [default: ./<name>].
    #[arg(long, short, value_name = "PATH")]
    output: Option<PathBuf>,
    /// A TOML file of settings, as for `serve`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The tool cache [env: HB_TOOL_CACHE_DIR] [default: <data dir>/tool-cache].
    #[arg(long, value_name = "DIR")]
    tool_cache_dir: Option<String>,
    /// Hosts that may resolve to private addresses and use http [env: HB_ALLOWED_HOSTS].
    #[arg(long, value_name = "HOSTS")]
    allowed_hosts: Option<String>,
}

/// Runs the command and maps its outcome to the documented exit codes.
pub fn run(args: FetchArgs) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    match runtime.block_on(fetch(args)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("headless-bridge fetch: {message}");
            ExitCode::from(code)
        }
    }
}

async fn fetch(args: FetchArgs) -> Result<serde_json::Value, (u8, String)> {
    let mut raw = RawConfig::default();
    if let Some(path) = &args.config {
        raw.merge_file(path).map_err(|e| (2, e.to_string()))?;
    }
    raw.merge_env(|name| std::env::var(name).ok());
    raw.merge_flag("tool_cache_dir", args.tool_cache_dir);
    raw.merge_flag("allowed_hosts", args.allowed_hosts);
    let config = raw.build().map_err(|e| (2, e.to_string()))?;

    let policy = UrlPolicy::new(&config.allowed_hosts);
    let mut urls = Vec::new();
    for raw in std::iter::once(&args.url).chain(&args.mirrors) {
        let url = policy
            .check(raw)
            .await
            .map_err(|e| (2, format!("the URL {e}")))?;
        urls.push(url);
    }
    let sha256 = match &args.sha256 {
        Some(text) => Some(
            text.parse::<Sha256Digest>()
                .map_err(|e| (2, e.to_string()))?,
        ),
        None => None,
    };
    let name = args.name.unwrap_or_else(|| file_name(&urls[0]));
    let output = args.output.unwrap_or_else(|| PathBuf::from(&name));

    let fetcher = Fetcher::new(policy, config.fetch);
    let source = ToolSource { name, urls, sha256 };
    let fetched = fetcher
        .install(&source, &output, None)
        .await
        .map_err(|e| (exit_code(&e), error_chain(&e)))?;
    Ok(serde_json::json!({
        "path": output,
        "sha256": fetched.digest.to_string(),
        "size": fetched.size,
        "from": fetched.from,
    }))
}

fn exit_code(err: &FetchError) -> u8 {
    match err {
        FetchError::Mismatch { .. } => 3,
        _ if err.is_local() => 1,
        _ => 4,
    }
}

/// The last path segment of `url`, or `tool` when it has none.
fn file_name(url: &url::Url) -> String {
    url.path_segments()
        .and_then(|mut segments| segments.next_back().map(str::to_owned))
        .filter(|s| !s.is_empty() && !s.starts_with('.'))
        .unwrap_or_else(|| "tool".to_owned())
}
