//! The run request `submit` sends (`POST /v1/runs`), made from its flags and checked before
//! anything is sent: a value the bridge would refuse is an error naming the flag, with the
//! same rules the bridge applies (tool names, digests, URL syntax, artifact paths, limits).
//! Only what needs the bridge's own settings is left to it: its allowed hosts, its longest
//! timeout, the adapters and logins it has.
//!
//! A tool takes several flags, tied together by the tool's name: `--tool NAME=URL` gives it,
//! `--tool-sha256 NAME=DIGEST` (required), `--tool-mirror NAME=URL` and
//! `--tool-archive-path NAME=PATH` add to it. A name never holds `=`, so `NAME=` is
//! unambiguous whatever the value holds.

use std::collections::BTreeMap;

use clap::Args;
use headless_bridge::artifacts::{self, check_declared};
use headless_bridge::digest::Sha256Digest;
use headless_bridge::policy::check_http_url;
use headless_bridge::run::ToolSpec;
use serde_json::{Value, json};

/// The flags that make a run request.
#[derive(Args, Debug)]
pub struct RunRequestArgs {
    /// The adapter (CLI) to run: codex, claude, gemini or a profile's name.
    #[arg(long, default_value = "codex")]
    adapter: String,
    /// A repository to clone into the run's work tree.
    #[arg(long, value_name = "URL")]
    repo: Option<String>,
    /// A branch, tag or commit of the repository.
    #[arg(long = "ref", value_name = "REF", requires = "repo")]
    git_ref: Option<String>,
    /// The caller's reference; a repeated submission with the same one returns the same run.
    #[arg(long, value_name = "ID")]
    contract_id: Option<String>,
    /// Seconds the run may take [default: the bridge's HB_RUN_TIMEOUT].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    /// Seconds the CLI may print nothing before the run ends as `stalled`; at most the run's
    /// timeout [default: the bridge's HB_RUN_IDLE_TIMEOUT].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: Option<u64>,
    /// A tool to download, check and put on the CLI's PATH as NAME (letters, digits, '.', '_',
    /// '-'); its digest goes in --tool-sha256. Repeat for more tools (up to 16).
    #[arg(long = "tool", value_name = "NAME=URL", value_parser = tool_url)]
    tools: Vec<(String, String)>,
    /// The sha256 of a --tool's download: `sha256:<64 hex>` or the 64 hex characters (as
    /// `sha256sum` prints them). Required for every --tool.
    #[arg(long = "tool-sha256", value_name = "NAME=DIGEST", value_parser = tool_digest)]
    tool_digests: Vec<(String, String)>,
    /// Another URL serving a --tool's download, tried in order after its own; repeat for more
    /// (up to 8 per tool).
    #[arg(long = "tool-mirror", value_name = "NAME=URL", value_parser = tool_url)]
    tool_mirrors: Vec<(String, String)>,
    /// The --tool's download is a tar.gz or zip archive, and PATH is the executable inside it.
    #[arg(long = "tool-archive-path", value_name = "NAME=PATH", value_parser = tool_archive_path)]
    tool_archive_paths: Vec<(String, String)>,
    /// A file the run will write, relative to the work tree, to keep after it (fetch it with
    /// GET /v1/runs/{id}/artifacts/PATH). Repeat for more (up to 16).
    #[arg(long = "artifact", value_name = "PATH", value_parser = artifact_path)]
    artifacts: Vec<String>,
    /// The task for the CLI.
    prompt: String,
}

impl RunRequestArgs {
    /// The body of `POST /v1/runs`, or why the flags cannot make one, naming the flag.
    pub fn to_request(&self) -> Result<Value, String> {
        let mut request = json!({ "adapter": self.adapter, "prompt": self.prompt });
        if let Some(url) = &self.repo {
            request["repo"] = json!({ "url": url });
            if let Some(git_ref) = &self.git_ref {
                request["repo"]["ref"] = json!(git_ref);
            }
        }
        if let Some(id) = &self.contract_id {
            request["contract_id"] = json!(id);
        }
        if let Some(timeout) = self.timeout {
            request["timeout_s"] = json!(timeout);
        }
        if let Some(idle) = self.idle_timeout {
            if let Some(timeout) = self.timeout.filter(|timeout| idle > *timeout) {
                return Err(format!(
                    "--idle-timeout {idle} is longer than --timeout {timeout}: the run would \
                     end at its timeout first; give a shorter --idle-timeout"
                ));
            }
            request["idle_timeout_s"] = json!(idle);
        }
        if !self.tools.is_empty() {
            request["tools"] = Value::Array(self.tool_requests()?);
        } else if let Some((flag, name)) = self.tool_parts().next() {
            return Err(no_such_tool(flag, name));
        }
        if self.artifacts.len() > artifacts::MAX_DECLARED {
            return Err(format!(
                "--artifact is given {} times; a run keeps at most {}",
                self.artifacts.len(),
                artifacts::MAX_DECLARED
            ));
        }
        if !self.artifacts.is_empty() {
            request["artifacts"] = json!(self.artifacts);
        }
        Ok(request)
    }

    /// The `tools` of the request: each --tool with the parts the other flags give it.
    fn tool_requests(&self) -> Result<Vec<Value>, String> {
        if self.tools.len() > ToolSpec::MAX_PER_RUN {
            return Err(format!(
                "--tool is given {} times; a run takes at most {} tools",
                self.tools.len(),
                ToolSpec::MAX_PER_RUN
            ));
        }
        let mut tools: BTreeMap<&str, Value> = BTreeMap::new();
        for (name, url) in &self.tools {
            let tool = json!({ "name": name, "url": url });
            if tools.insert(name, tool).is_some() {
                return Err(format!(
                    "--tool gives tool `{name}` twice; give each tool once"
                ));
            }
        }
        if let Some((flag, name)) = self
            .tool_parts()
            .find(|(_, name)| !tools.contains_key(name))
        {
            return Err(no_such_tool(flag, name));
        }

        for (name, digest) in &self.tool_digests {
            let tool = tools.get_mut(name.as_str()).expect("checked above");
            if tool.get("sha256").is_some() {
                return Err(format!("--tool-sha256 gives tool `{name}` twice"));
            }
            tool["sha256"] = json!(digest);
        }
        for (name, url) in &self.tool_mirrors {
            let tool = tools.get_mut(name.as_str()).expect("checked above");
            let mirrors = tool["mirrors"].as_array_mut();
            match mirrors {
                Some(mirrors) if mirrors.len() == ToolSpec::MAX_MIRRORS => {
                    return Err(format!(
                        "--tool-mirror gives tool `{name}` more than {} mirrors",
                        ToolSpec::MAX_MIRRORS
                    ));
                }
                Some(mirrors) => mirrors.push(json!(url)),
                None => tool["mirrors"] = json!([url]),
            }
        }
        for (name, path) in &self.tool_archive_paths {
            let tool = tools.get_mut(name.as_str()).expect("checked above");
            if tool.get("archive_path").is_some() {
                return Err(format!("--tool-archive-path gives tool `{name}` twice"));
            }
            tool["archive_path"] = json!(path);
        }

        // In the order given, each with its digest.
        self.tools
            .iter()
            .map(|(name, _)| {
                let tool = tools.remove(name.as_str()).expect("each name once");
                match tool.get("sha256") {
                    Some(_) => Ok(tool),
                    None => Err(format!(
                        "--tool {name}=... has no digest: add --tool-sha256 {name}=<sha256 of \
                         the download>"
                    )),
                }
            })
            .collect()
    }

    /// The tool names the flags that add to a tool give, each with its flag.
    fn tool_parts(&self) -> impl Iterator<Item = (&'static str, &str)> {
        named("--tool-sha256", &self.tool_digests)
            .chain(named("--tool-mirror", &self.tool_mirrors))
            .chain(named("--tool-archive-path", &self.tool_archive_paths))
    }
}

/// The tool names of `parts`, each with `flag`.
fn named<'a>(
    flag: &'static str,
    parts: &'a [(String, String)],
) -> impl Iterator<Item = (&'static str, &'a str)> {
    parts.iter().map(move |(name, _)| (flag, name.as_str()))
}

fn no_such_tool(flag: &str, name: &str) -> String {
    format!("{flag} names tool `{name}`, which no --tool gives; add --tool {name}=<URL>")
}

/// `NAME=VALUE`, with the tool name checked as the bridge checks it.
fn tool_part(raw: &str) -> Result<(String, &str), String> {
    let Some((name, value)) = raw.split_once('=') else {
        return Err("expected NAME=VALUE, the tool's name, '=' and the value".into());
    };
    if name.is_empty() || name.len() > ToolSpec::MAX_NAME {
        return Err(format!(
            "the tool's name must have 1 to {} characters",
            ToolSpec::MAX_NAME
        ));
    }
    ToolSpec::check_name(name).map_err(|why| format!("the tool's name `{name}` {why}"))?;
    Ok((name.to_owned(), value))
}

/// `NAME=URL`: an absolute http(s) URL without credentials.
fn tool_url(raw: &str) -> Result<(String, String), String> {
    let (name, url) = tool_part(raw)?;
    check_http_url(url).map_err(|e| format!("the URL {e}"))?;
    Ok((name, url.to_owned()))
}

/// `NAME=DIGEST`, sent as `sha256:<hex>`.
fn tool_digest(raw: &str) -> Result<(String, String), String> {
    let (name, digest) = tool_part(raw)?;
    let digest: Sha256Digest = digest.parse().map_err(|e| format!("{e}"))?;
    Ok((name, digest.to_string()))
}

/// `NAME=PATH`: a relative path inside the archive.
fn tool_archive_path(raw: &str) -> Result<(String, String), String> {
    let (name, path) = tool_part(raw)?;
    check_declared(path).map_err(|why| format!("the path {why}"))?;
    Ok((name, path.to_owned()))
}

/// A path relative to the run's work tree.
fn artifact_path(raw: &str) -> Result<String, String> {
    check_declared(raw).map_err(|why| format!("the path {why}"))?;
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        run: RunRequestArgs,
    }

    fn request(args: &[&str]) -> Result<Value, String> {
        let flags = Flags::try_parse_from(["submit"].iter().chain(args).chain(&["do it"]))
            .map_err(|e| e.to_string())?;
        flags.run.to_request()
    }

    #[test]
    fn tools_artifacts_and_the_idle_timeout_go_into_the_request() {
        let sent = request(&[
            "--tool",
            "ak=https://tools.example.com/ak.tar.gz",
            "--tool",
            "rg=https://tools.example.com/rg",
            "--tool-mirror",
            "ak=https://mirror.example.com/ak.tar.gz",
            "--tool-mirror",
            "ak=https://mirror2.example.com/ak.tar.gz?x=a=b",
            "--tool-sha256",
            &format!("rg={}", HEX.to_uppercase()),
            "--tool-sha256",
            &format!("ak=sha256:{HEX}"),
            "--tool-archive-path",
            "ak=ak-2.0/bin/ak",
            "--artifact",
            "fix.patch",
            "--artifact",
            "reports/summary.md",
            "--timeout",
            "900",
            "--idle-timeout",
            "300",
        ])
        .expect("a valid request");
        let digest = format!("sha256:{HEX}");
        assert_eq!(
            sent,
            json!({
                "adapter": "codex", "prompt": "do it", "timeout_s": 900, "idle_timeout_s": 300,
                "tools": [
                    {"name": "ak", "url": "https://tools.example.com/ak.tar.gz",
                     "sha256": digest, "archive_path": "ak-2.0/bin/ak",
                     "mirrors": ["https://mirror.example.com/ak.tar.gz",
                                 "https://mirror2.example.com/ak.tar.gz?x=a=b"]},
                    {"name": "rg", "url": "https://tools.example.com/rg", "sha256": digest},
                ],
                "artifacts": ["fix.patch", "reports/summary.md"],
            })
        );
        let plain = request(&[]).expect("a valid request");
        assert_eq!(plain, json!({"adapter": "codex", "prompt": "do it"}));
    }

    #[rstest::rstest]
    #[case::tool_without_url(&["--tool", "ak"], "--tool <NAME=URL>")]
    #[case::tool_name(&["--tool", "../ak=https://x.example/ak"], "--tool <NAME=URL>")]
    #[case::tool_url(&["--tool", "ak=tools.example.com/ak"], "--tool <NAME=URL>")]
    #[case::tool_url_credentials(&["--tool", "ak=https://u:p@x.example/ak"], "--tool <NAME=URL>")]
    #[case::tool_scheme(&["--tool", "ak=ftp://x.example/ak"], "--tool <NAME=URL>")]
    #[case::digest(&["--tool-sha256", "ak=abc123"], "--tool-sha256 <NAME=DIGEST>")]
    #[case::mirror_url(&["--tool-mirror", "ak=-x"], "--tool-mirror <NAME=URL>")]
    #[case::archive_path(&["--tool-archive-path", "ak=../ak"], "--tool-archive-path <NAME=PATH>")]
    #[case::artifact_parent(&["--artifact", "../secret"], "--artifact <PATH>")]
    #[case::artifact_absolute(&["--artifact", "/etc/passwd"], "--artifact <PATH>")]
    #[case::idle_zero(&["--idle-timeout", "0"], "--idle-timeout <SECONDS>")]
    #[case::timeout_zero(&["--timeout", "0"], "--timeout <SECONDS>")]
    #[case::no_digest(&["--tool", "ak=https://x.example/ak"], "--tool-sha256 ak=")]
    #[case::digest_for_nothing(&["--tool-sha256", &format!("rg={HEX}")], "--tool-sha256 names tool `rg`")]
    #[case::mirror_for_another(
        &["--tool", "ak=https://x.example/ak", "--tool-sha256", &format!("ak={HEX}"),
          "--tool-mirror", "rg=https://x.example/rg"],
        "--tool-mirror names tool `rg`"
    )]
    #[case::tool_twice(
        &["--tool", "ak=https://x.example/ak", "--tool", "ak=https://y.example/ak"],
        "--tool gives tool `ak` twice"
    )]
    #[case::digest_twice(
        &["--tool", "ak=https://x.example/ak", "--tool-sha256", &format!("ak={HEX}"),
          "--tool-sha256", &format!("ak={HEX}")],
        "--tool-sha256 gives tool `ak` twice"
    )]
    #[case::idle_past_timeout(&["--timeout", "60", "--idle-timeout", "61"], "--idle-timeout 61")]
    fn a_bad_flag_is_refused_by_name(#[case] args: &[&str], #[case] named: &str) {
        let refused = request(args).expect_err("refused");
        assert!(refused.contains(named), "{args:?}: {refused}");
    }

    #[test]
    fn limits_are_the_bridges() {
        let artifacts: Vec<String> = (0..=artifacts::MAX_DECLARED)
            .map(|i| format!("a{i}"))
            .collect();
        let args: Vec<&str> = artifacts
            .iter()
            .flat_map(|a| ["--artifact", a.as_str()])
            .collect();
        let refused = request(&args).expect_err("one too many");
        assert!(
            refused.starts_with("--artifact is given 17 times"),
            "{refused}"
        );

        let mut args = vec![
            "--tool".to_owned(),
            "ak=https://x.example/ak".to_owned(),
            "--tool-sha256".to_owned(),
            format!("ak={HEX}"),
        ];
        for i in 0..=ToolSpec::MAX_MIRRORS {
            args.extend([
                "--tool-mirror".to_owned(),
                format!("ak=https://m{i}.example/ak"),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let refused = request(&args).expect_err("one mirror too many");
        assert!(refused.contains("more than 8 mirrors"), "{refused}");
    }
}
