//! The health of a profile adapter: can its executable run, and is its login present and
//! unexpired, as `GET /v1/adapters` shows it.
//!
//! The binary probe is a real process (`claude --version`, say) with a timeout; its result is
//! cached for the profile's `cache_s`, since a probe costs a process start and listing the
//! adapters should stay cheap. Credentials are judged from their files at every call, without
//! the network and without showing a value: which secrets are present, and when a credential
//! file's expiry field says the login ends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::output::field_of;
use super::profile::{HealthSpec, Profile, expand};

/// Probe results by adapter name, with when they were taken.
#[derive(Debug, Clone, Default)]
pub struct ProbeCache {
    entries: Arc<Mutex<HashMap<String, (Instant, Value)>>>,
}

impl ProbeCache {
    /// The cached value for `name` if younger than `ttl`, else a fresh one from `probe`.
    pub async fn get_or_probe<F>(&self, name: &str, ttl: Duration, probe: F) -> Value
    where
        F: Future<Output = Value>,
    {
        if let Some((at, value)) = self.lock().get(name)
            && at.elapsed() < ttl
        {
            let mut value = value.clone();
            value["cached_for_s"] = json!(at.elapsed().as_secs());
            return value;
        }
        let value = probe.await;
        self.lock()
            .insert(name.to_owned(), (Instant::now(), value.clone()));
        value
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Value)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The health of `profile`; probes run with `probe_home` as HOME.
pub async fn check(profile: &Profile, probe_home: &Path, cache: &ProbeCache) -> Value {
    let binary = match profile.health.as_ref() {
        Some(HealthSpec {
            command: Some(args),
            timeout_s,
            cache_s,
            ..
        }) => {
            let timeout = Duration::from_secs(*timeout_s);
            let probe = probe(profile, args, probe_home, timeout);
            cache
                .get_or_probe(&profile.name, Duration::from_secs(*cache_s), probe)
                .await
        }
        _ => {
            json!({ "ok": true, "path": profile.executable.display().to_string(), "note": "no probe configured" })
        }
    };
    let credentials = credentials(profile, OffsetDateTime::now_utc());
    let ok = binary["ok"] == true && credentials["ok"] == true;
    json!({ "ok": ok, "binary": binary, "credentials": credentials })
}

async fn probe(profile: &Profile, args: &[String], home: &Path, timeout: Duration) -> Value {
    let path = profile.executable.display().to_string();
    let shown = format!("{} {}", profile.executable.display(), args.join(" "));
    let problem = |problem: String| json!({ "ok": false, "path": path, "problem": problem });
    if let Err(e) = std::fs::create_dir_all(home) {
        return problem(format!("failed to create {}: {e}", home.display()));
    }

    // The profile's static environment comes along: it is what keeps a CLI off the network
    // (CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC, say). Its secrets never do.
    let shown_home = home.display().to_string();
    let places = [
        ("{work_dir}", shown_home.as_str()),
        ("{home}", shown_home.as_str()),
        ("{tmp_dir}", shown_home.as_str()),
    ];
    let mut command = tokio::process::Command::new(&profile.executable);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("TMPDIR", home)
        .envs([("CI", "1"), ("NO_COLOR", "1"), ("TERM", "dumb")])
        .envs(profile.env.iter().map(|(k, v)| (k, expand(v, &places))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let child = match crate::reaper::spawn(&mut command) {
        Ok(child) => child,
        Err(e) => return problem(format!("failed to run {path}: {e}")),
    };
    let pid = child.id();
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, child.wait_with_output()).await;
    crate::reaper::forget(pid);
    match result {
        Ok(Ok(out)) if out.status.success() => {
            let first_line = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            json!({ "ok": true, "path": path, "version": first_line,
                    "probe_ms": started.elapsed().as_millis() as u64 })
        }
        Ok(Ok(out)) => problem(format!("`{shown}` failed with {}", out.status)),
        Ok(Err(e)) => problem(format!("failed to run {path}: {e}")),
        Err(_) => problem(format!(
            "`{shown}` did not answer within {}s",
            timeout.as_secs()
        )),
    }
}

/// What the profile's secret files say, judged at `now`.
pub fn credentials(profile: &Profile, now: OffsetDateTime) -> Value {
    let mut present = Vec::new();
    let mut missing_required = Vec::new();
    let mut optional = Vec::new();
    let sources = profile
        .secret_env
        .values()
        .map(|s| (&s.file, s.optional))
        .chain(
            profile
                .files
                .iter()
                .filter_map(|f| f.source.as_ref().map(|s| (s, f.optional))),
        );
    for (file, is_optional) in sources {
        let path = profile.secret_path(file);
        let shown = path.display().to_string();
        match (path.is_file(), is_optional) {
            (true, _) => present.push(shown),
            (false, true) => optional.push(shown),
            (false, false) => missing_required.push(shown),
        }
    }
    let no_alternative = !optional.is_empty() && present.is_empty();
    let mut body = json!({ "ok": true, "present": present });
    if !missing_required.is_empty() || no_alternative {
        let missing = if missing_required.is_empty() {
            format!("one of {}", optional.join(", "))
        } else {
            missing_required.join(", ")
        };
        body["ok"] = json!(false);
        body["reason"] = json!("credentials_missing");
        body["problem"] = json!(format!("missing: {missing}"));
        body["remedy"] = json!("mount the login (a Secret) where the adapter's secrets_dir says");
        return body;
    }
    if let Some(health) = &profile.health
        && let (Some(file), Some(field)) = (&health.credential_file, &health.expiry_field)
    {
        expiry(
            &profile.secret_path(file),
            field,
            health.refresh_field.as_deref(),
            now,
            &mut body,
        );
    }
    body
}

/// Adds what the credential file's expiry says to `body`; a missing file is not a problem
/// here (it may be an optional alternative), an unreadable one is.
fn expiry(
    path: &PathBuf,
    field: &str,
    refresh: Option<&str>,
    now: OffsetDateTime,
    body: &mut Value,
) {
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    let Some(document) = parsed else {
        body["ok"] = json!(false);
        body["reason"] = json!("credentials_invalid");
        body["problem"] = json!(format!("{} is not valid JSON", path.display()));
        return;
    };
    let Some(expires_at) = field_of(&document, field).and_then(timestamp) else {
        body["note"] = json!(format!("{} has no expiry at `{field}`", path.display()));
        return;
    };
    body["expires_at"] = json!(expires_at.unix_timestamp());
    if expires_at > now {
        return;
    }
    let refreshable = refresh
        .and_then(|r| field_of(&document, r))
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if refreshable {
        body["note"] =
            json!("the access token has expired; the CLI will refresh it on the next run");
    } else {
        body["ok"] = json!(false);
        body["reason"] = json!("credentials_expired");
        body["problem"] = json!(format!("the login in {} has expired", path.display()));
        body["remedy"] = json!("log in again on a workstation and update the Secret");
    }
}

/// Epoch seconds, epoch milliseconds (anything past the year 33658 in seconds), or RFC 3339.
fn timestamp(value: &Value) -> Option<OffsetDateTime> {
    const MILLIS_FROM: i64 = 1 << 40;
    if let Some(n) = value.as_i64() {
        let seconds = if n >= MILLIS_FROM { n / 1000 } else { n };
        return OffsetDateTime::from_unix_timestamp(seconds).ok();
    }
    let text = value.as_str()?;
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn profile(secrets: &Path) -> Profile {
        let text = format!(
            "executable = \"/bin/true\"\nsecrets_dir = \"{}\"\n\
             secret_env = {{ K = {{ file = \"api_key\", optional = true }} }}\n\
             [[files]]\npath = \"c.json\"\nsource = \"creds.json\"\noptional = true\n\
             [health]\ncommand = [\"--version\"]\ncredential_file = \"creds.json\"\n\
             expiry_field = \"oauth.expiresAt\"\nrefresh_field = \"oauth.refreshToken\"\n",
            secrets.display()
        );
        Profile::parse("t", "t.toml", &text).unwrap()
    }

    const NOW: i64 = 1_800_000_000;

    #[rstest]
    #[case::nothing_mounted(None, false, Some("credentials_missing"))]
    #[case::valid_millis(Some(r#"{"oauth":{"expiresAt":1800000060000}}"#), true, None)]
    #[case::valid_rfc3339(Some(r#"{"oauth":{"expiresAt":"2030-01-01T00:00:00Z"}}"#), true, None)]
    #[case::expired_no_refresh(
        Some(r#"{"oauth":{"expiresAt":1700000000}}"#),
        false,
        Some("credentials_expired")
    )]
    #[case::expired_refreshable(
        Some(r#"{"oauth":{"expiresAt":1700000000,"refreshToken":"rt"}}"#),
        true,
        None
    )]
    #[case::not_json(Some("nope"), false, Some("credentials_invalid"))]
    fn credentials_are_judged_from_their_files(
        #[case] creds: Option<&str>,
        #[case] ok: bool,
        #[case] reason: Option<&str>,
    ) {
        let secrets = tempfile::tempdir().unwrap();
        if let Some(creds) = creds {
            std::fs::write(secrets.path().join("creds.json"), creds).unwrap();
        }
        let now = OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        let body = credentials(&profile(secrets.path()), now);
        assert_eq!(body["ok"], ok, "{body}");
        assert_eq!(body["reason"].as_str(), reason, "{body}");
    }

    #[tokio::test]
    async fn a_probe_result_is_cached_for_its_time() {
        let cache = ProbeCache::default();
        let first = cache
            .get_or_probe("x", Duration::from_secs(60), async {
                json!({"ok": true, "n": 1})
            })
            .await;
        let second = cache
            .get_or_probe("x", Duration::from_secs(60), async {
                json!({"ok": true, "n": 2})
            })
            .await;
        assert_eq!(
            (first["n"].as_u64(), second["n"].as_u64()),
            (Some(1), Some(1))
        );
        let expired = cache
            .get_or_probe("x", Duration::ZERO, async { json!({"ok": true, "n": 3}) })
            .await;
        assert_eq!(expired["n"], 3);
    }

    #[tokio::test]
    async fn a_probe_that_hangs_is_cut_at_its_timeout() {
        let text = "executable = \"/bin/sleep\"\n[health]\ncommand = [\"30\"]\ntimeout_s = 1\n";
        let profile = Profile::parse("slow", "slow.toml", text).unwrap();
        let home = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let body = check(&profile, home.path(), &ProbeCache::default()).await;
        assert_eq!(body["binary"]["ok"], false);
        assert!(
            body["binary"]["problem"]
                .as_str()
                .unwrap()
                .contains("within 1s")
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
