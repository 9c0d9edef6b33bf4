//! The Codex side of the fake model: the `config.toml` that points Codex 0.171.0 at a
//! [`FakeModel`] with no other network traffic and no retries, and the API-key `auth.json`
//! that carries the key. Running Codex is left to the caller.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde_json::json;

use super::FakeModel;

/// The model slug the config asks for. It must be one Codex bundles metadata for
/// (`codex debug models --bundled`), or every turn emits an "unknown model" error item.
pub const CODEX_MODEL: &str = "gpt-5.5";

/// The config, with `{base_url}` to fill in. Each key is there for a reason:
/// - `requires_openai_auth`: send the key from `auth.json` as the bearer (no env var needed);
/// - `supports_websockets = false`: POST straight away instead of trying a WebSocket upgrade;
/// - both retry caps at 0: one request per turn, so failures are immediate and countable;
/// - `analytics`, `plugins`: otherwise Codex reaches for OpenAI and GitHub hosts on start;
/// - `unbounded_connection_retries`: otherwise an unreachable fake makes Codex wait forever.
const CONFIG_TEMPLATE: &str = r#"model = "{model}"
model_provider = "fake"

[model_providers.fake]
name = "fake"
base_url = "{base_url}"
wire_api = "responses"
requires_openai_auth = true
supports_websockets = false
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[features]
plugins = false
unbounded_connection_retries = false
"#;

impl FakeModel {
    /// The `config.toml` text that points Codex at this fake and at nothing else.
    pub fn codex_config_toml(&self) -> String {
        CONFIG_TEMPLATE
            .replace("{model}", CODEX_MODEL)
            .replace("{base_url}", &self.base_url())
    }

    /// The `auth.json` text of an API-key login with this fake's key, as `codex login
    /// --with-api-key` writes it.
    pub fn codex_auth_json(&self) -> String {
        let auth = json!({"auth_mode": "apikey", "OPENAI_API_KEY": self.shared.api_key});
        format!("{auth}\n")
    }

    /// Creates `dir` if needed and writes `config.toml` and `auth.json` (mode 0600) into it.
    pub fn write_codex_home(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        fs::write(dir.join("config.toml"), self.codex_config_toml())?;
        write_private(&dir.join("auth.json"), self.codex_auth_json().as_bytes())
    }
}

/// Writes `contents` to a file only its owner can read. A new file is never wider; an existing
/// one is narrowed before the secret goes in.
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)
}
