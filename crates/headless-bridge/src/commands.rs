//! Operator commands beside `serve`: `secret create` prints the Kubernetes Secret that carries
//! a login into a cluster, and `doctor` runs the deep health check and explains it to a person.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use serde_json::Value;

use crate::config::Config;
use crate::credentials::{self, AuthMode, Logins};

/// Why `secret create` refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "`{0}` is not a valid Secret name: use lowercase letters, digits, '-' and '.', at most 253"
    )]
    Name(String),
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the login is not usable: {0}")]
    Login(#[from] credentials::CredentialError),
    #[error("{path} is not valid TOML: {reason}")]
    ConfigToml { path: String, reason: String },
}

/// The manifest of a Secret holding `auth.json` (and `config.toml` if given), to pipe into
/// `kubectl apply -f -`. The login is checked first, so a broken file never reaches a cluster.
/// Returns the manifest and a warning for a person, if any.
pub fn secret_manifest(
    auth: &Path,
    config_toml: Option<&Path>,
    name: &str,
    namespace: Option<&str>,
) -> Result<(String, Option<String>), SecretError> {
    check_name(name)?;
    if let Some(ns) = namespace {
        check_name(ns)?;
    }
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let login = credentials::parse(auth.to_owned(), read(auth)?)?;
    let mut files = vec![("auth.json", login.bytes().to_vec())];
    if let Some(path) = config_toml {
        let bytes = read(path)?;
        let text = String::from_utf8_lossy(&bytes);
        text.parse::<toml::Table>()
            .map_err(|e| SecretError::ConfigToml {
                path: path.display().to_string(),
                reason: e.message().to_owned(),
            })?;
        files.push(("config.toml", bytes));
    }

    let mut yaml = String::from("apiVersion: v1\nkind: Secret\nmetadata:\n");
    let _ = writeln!(yaml, "  name: {name}");
    if let Some(ns) = namespace {
        let _ = writeln!(yaml, "  namespace: {ns}");
    }
    yaml.push_str("  labels:\n    app.kubernetes.io/name: headless-bridge\ntype: Opaque\ndata:\n");
    for (key, bytes) in files {
        let _ = writeln!(
            yaml,
            "  {key}: {}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
    }
    let warning = (login.facts.auth_mode == AuthMode::Chatgpt).then(|| {
        "this is a ChatGPT login: its refresh token is single-use, so use this Secret for one \
         bridge only, and stop using the login on this machine (log in again here if you need it)"
            .to_owned()
    });
    Ok((yaml, warning))
}

/// A DNS-1123 subdomain, as Kubernetes requires of Secret and namespace names.
fn check_name(name: &str) -> Result<(), SecretError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(SecretError::Name(name.to_owned()))
    }
}

/// Runs the deep check with `config` and returns whether all is well and a report for a person.
pub async fn doctor(config: &Config) -> (bool, String) {
    let logins = Logins::new(config);
    let (ok, report) = crate::api::health::deep_report(config, &logins).await;
    let codex = &report["adapters"]["codex"];
    let mut text = String::new();
    line(&mut text, "git", &report["git"], |v| {
        v["version"].as_str().unwrap_or_default().to_owned()
    });
    line(&mut text, "codex binary", &codex["binary"], |v| {
        format!(
            "{} ({})",
            v["version"].as_str().unwrap_or_default(),
            v["path"].as_str().unwrap_or_default()
        )
    });
    line(&mut text, "login", &codex["credentials"], |v| {
        format!(
            "{} at {}",
            v["facts"]["auth_mode"].as_str().unwrap_or("?"),
            v["path"].as_str().unwrap_or("?")
        )
    });
    line(&mut text, "config.toml", &codex["config_toml"], |v| {
        if v["present"] == true {
            "parses".into()
        } else {
            "none (the CLI's defaults)".into()
        }
    });
    let _ = writeln!(
        text,
        "\n{}",
        if ok {
            "all checks passed"
        } else {
            "a run would fail: see above"
        }
    );
    (ok, text)
}

fn line(out: &mut String, what: &str, check: &Value, detail: impl Fn(&Value) -> String) {
    if check["ok"] == true {
        let _ = writeln!(out, "ok    {what:<13} {}", detail(check));
        return;
    }
    let problem = check["problem"].as_str().unwrap_or("failed");
    let _ = writeln!(out, "FAIL  {what:<13} {problem}");
    if let Some(remedy) = check["remedy"].as_str() {
        let _ = writeln!(out, "      {:<13} fix: {remedy}", "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_manifest_carries_both_files_base64() {
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("auth.json");
        let login = r#"{"auth_mode":"apikey","OPENAI_API_KEY":"sk-test-0123456789"}"#;
        std::fs::write(&auth, login).unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "model = \"gpt-5.5\"\n").unwrap();

        let (yaml, warning) =
            secret_manifest(&auth, Some(&config), "codex-login", Some("agents")).unwrap();

        let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(
            yaml.contains(&format!("  auth.json: {}\n", encode(login))),
            "{yaml}"
        );
        assert!(yaml.contains(&format!(
            "  config.toml: {}\n",
            encode("model = \"gpt-5.5\"\n")
        )));
        assert!(yaml.contains("  name: codex-login\n  namespace: agents\n"));
        assert!(
            !yaml.contains("sk-test"),
            "values are encoded, as Kubernetes expects"
        );
        assert_eq!(warning, None);
    }

    #[test]
    fn a_broken_login_or_name_is_refused_before_printing() {
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("auth.json");
        std::fs::write(&auth, "{}").unwrap();
        assert!(matches!(
            secret_manifest(&auth, None, "ok", None),
            Err(SecretError::Login(_))
        ));
        std::fs::write(&auth, r#"{"OPENAI_API_KEY":"sk-test-0123456789"}"#).unwrap();
        for bad in ["Upper", "-dash", "a_b", ""] {
            assert!(
                matches!(
                    secret_manifest(&auth, None, bad, None),
                    Err(SecretError::Name(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_chatgpt_login_comes_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("auth.json");
        std::fs::write(
            &auth,
            r#"{"auth_mode":"chatgpt","tokens":{"access_token":"a","refresh_token":"rt"}}"#,
        )
        .unwrap();
        let (_, warning) = secret_manifest(&auth, None, "login", None).unwrap();
        assert!(warning.unwrap().contains("single-use"));
    }
}
