//! The demo world: every cloud a headless-bridge demo run touches, started together on
//! loopback. [`Demo`] owns a fake model that runs the demo tool and quotes the README, a git
//! host with a small buggy project, and a download host with the `ak` tool. Writing the Codex
//! home and printing the summary is left to the `hb-testkit demo` command.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::files::FileServer;
use crate::git::GitServer;
use crate::model::{Behavior, FakeModel};

/// The command the demo model asks Codex to run: proves the tool is installed and the repo
/// is checked out in the working directory.
pub const DEMO_COMMAND: &str = "ak --version && head -n 3 README.md";

/// The name of the demo repository; its clone URL ends in `/demo.git`.
pub const REPO_NAME: &str = "demo";
/// The tool's name, which is also its path on the download host.
pub const TOOL_NAME: &str = "ak";

/// How long Codex lets the demo command run before reporting it as still running.
const DEMO_YIELD_MS: u64 = 10_000;

const README: &str = "# Demo project\n\
A tiny statistics helper used by the headless-bridge demo.\n\
`python3 stats.py` should print 3.0 but prints 2.0: find and fix the bug.\n";

const STATS_PY: &str = r#"def mean(values):
    """Return the arithmetic mean of values."""
    return sum(values) / (len(values) + 1)


if __name__ == "__main__":
    print(mean([2, 4]))
"#;

/// The demo tool: a POSIX shell script, so it runs wherever the bridge does.
pub const TOOL_SCRIPT: &str = r#"#!/bin/sh
# ak: the demo tool served by hb-testkit.
case "$1" in
  --version) echo "ak 1.0.0 (demo tool)" ;;
  *) echo "usage: ak --version" >&2; exit 2 ;;
esac
"#;

/// The running demo servers; dropping it stops them all.
#[derive(Debug)]
pub struct Demo {
    /// The model that asks Codex to run [`DEMO_COMMAND`] and then quotes its output.
    pub model: FakeModel,
    /// The git host holding the [`REPO_NAME`] repository.
    pub git: GitServer,
    /// The download host serving the [`TOOL_NAME`] script.
    pub files: FileServer,
    /// The clone URL of the demo repository.
    pub repo_url: String,
}

impl Demo {
    /// Starts the three servers; the model accepts only `api_key`.
    pub async fn start(api_key: &str) -> Demo {
        let behavior = Behavior::RunThenReply {
            command: DEMO_COMMAND.to_owned(),
            yield_time_ms: DEMO_YIELD_MS,
        };
        let model = FakeModel::start(behavior, api_key).await;
        let git = GitServer::start().await;
        let repo_url = git.create_repo(REPO_NAME, &[("README.md", README), ("stats.py", STATS_PY)]);
        let tool = vec![(TOOL_NAME.to_owned(), TOOL_SCRIPT.as_bytes().to_vec())];
        let files = FileServer::start(tool).await;
        Demo {
            model,
            git,
            files,
            repo_url,
        }
    }

    /// The download URL of the tool.
    pub fn tool_url(&self) -> String {
        self.files.url(TOOL_NAME)
    }

    /// The lowercase hex SHA-256 of the tool, as a bridge would pin it.
    pub fn tool_sha256(&self) -> String {
        hex::encode(Sha256::digest(TOOL_SCRIPT.as_bytes()))
    }

    /// The addresses a bridge needs, as one JSON object; `codex_dir` is where the caller wrote
    /// the Codex home for [`Demo::model`].
    pub fn summary(&self, codex_dir: &str) -> Value {
        json!({
            "model_base_url": self.model.base_url(),
            "repo_url": self.repo_url,
            "tool_url": self.tool_url(),
            "tool_sha256": self.tool_sha256(),
            "codex_dir": codex_dir,
        })
    }
}
