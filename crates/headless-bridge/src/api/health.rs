//! `GET /health`: liveness, and with `?deep=1` the truth about what a run needs.
//!
//! Plain `/health` answers 200 whenever the process serves; it never looks at credentials, so
//! a liveness probe cannot restart a pod because a login expired. The deep check runs the
//! codex binary (`--version`, in a private CODEX_HOME) and judges the login from its file
//! alone: it never refreshes a token and never shows one. It answers 503 with what is wrong
//! and what to do when a run could not succeed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::AppState;
use super::body::ApiQuery;
use super::schema::HealthReport;
use crate::config::{CodexConfig, Config};
use crate::credentials::{AuthMode, Logins, WorkingCopy};

/// How long the result of the program checks is reused.
const PROGRAM_CHECK_TTL: Duration = Duration::from_secs(10);
/// `codex --version` answers in well under a second; more means something is wrong.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `GET /v1/adapters` reuses a `codex --version` probe, as profiles do by default.
const CODEX_PROBE_CACHE: Duration = Duration::from_secs(300);

/// The Codex adapter's health as `GET /v1/adapters` shows it: the binary (probed, cached)
/// and the login (read at every call).
pub(super) async fn codex_adapter_health(state: &AppState) -> Value {
    let codex_home = state.config.data_dir.join("health").join("codex-home");
    let probes = state.engine.adapters().probes();
    let binary = probes
        .get_or_probe(
            crate::adapter::CODEX,
            CODEX_PROBE_CACHE,
            check_binary(&state.config.codex, &codex_home),
        )
        .await;
    let credentials = check_credentials(state.engine.login(), state.config.credential_warn_window);
    let ok = binary["ok"] == true && credentials["ok"] == true;
    json!({ "ok": ok, "binary": binary, "credentials": credentials })
}

/// Query of `GET /health`.
#[derive(Debug, Deserialize)]
pub struct HealthQuery {
    deep: Option<String>,
}

/// Liveness, or the deep check when `deep` is `1` or `true`.
#[utoipa::path(
    get, path = "/health", tag = "health",
    summary = "Liveness, or the deep check of what a run needs",
    params(("deep" = Option<String>, Query, description = "`1`, `true` or `yes` for the deep check")),
    responses(
        (status = 200, description = "serving (and with `deep`, a run could succeed now)", body = HealthReport),
        (status = 503, description = "deep check: a run could not succeed; the body says what to do", body = HealthReport),
    ),
    security(()),
)]
pub async fn health(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<HealthQuery>,
) -> (StatusCode, Json<Value>) {
    let deep = matches!(query.deep.as_deref(), Some("1" | "true" | "yes"));
    if !deep {
        return (StatusCode::OK, Json(json!({ "status": "ok" })));
    }

    let (ok, body) = deep_report(&state.config, state.engine.logins()).await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// The deep check: whether a Codex run could succeed now, and the facts behind the verdict.
/// It never refreshes a token, calls no network, and shows no secret.
/// Every configured login is judged: a run may name any of them.
pub async fn deep_report(config: &Config, logins: &Logins) -> (bool, Value) {
    let codex_home = config.data_dir.join("health").join("codex-home");
    let (binary, git) = cached_program_checks(&config.codex, &codex_home).await;
    let window = config.credential_warn_window;
    let default = logins.default_login().copy.as_ref();
    let credentials = check_credentials(default, window);
    let config_toml = check_config_toml(&config.codex);
    // The named logins, each with its own config.toml.
    let named: Vec<(&str, Value, Value)> = logins
        .iter()
        .filter(|(name, _)| *name != crate::credentials::logins::DEFAULT)
        .map(|(name, login)| {
            let check = check_credentials(&login.copy, window);
            (name, check, check_config_toml(login.copy.config()))
        })
        .collect();
    let mut checks = vec![&credentials, &config_toml];
    for (_, check, toml) in &named {
        checks.extend([check, toml]);
    }
    let codex_ok = binary["ok"] == true && checks.iter().all(|check| check["ok"] == true);
    let degraded = checks.iter().any(|check| check["state"] == "degraded");
    let mut codex = json!({
        "ok": codex_ok, "binary": binary, "credentials": credentials, "config_toml": config_toml,
    });
    if !named.is_empty() {
        let by_name: serde_json::Map<String, Value> = named
            .into_iter()
            .map(|(name, mut check, toml)| {
                check["config_toml"] = toml;
                (name.to_owned(), check)
            })
            .collect();
        codex["named_credentials"] = Value::Object(by_name);
    }
    let ok = codex_ok && git["ok"] == true;
    let status = match (ok, degraded) {
        (false, _) => "unhealthy",
        (true, true) => "degraded",
        (true, false) => "ok",
    };
    let body = json!({ "status": status, "git": git, "adapters": { "codex": codex } });
    (ok, body)
}

/// The program checks, run at most once per [`PROGRAM_CHECK_TTL`] however often probes and
/// clients ask: the deep check is unauthenticated, and each check starts a process.
async fn cached_program_checks(
    config: &CodexConfig,
    codex_home: &std::path::Path,
) -> (Value, Value) {
    type Checked = (Instant, std::path::PathBuf, Value, Value);
    static CACHE: tokio::sync::Mutex<Option<Checked>> = tokio::sync::Mutex::const_new(None);
    let mut cache = CACHE.lock().await;
    if let Some((at, bin, binary, git)) = cache.as_ref()
        && at.elapsed() < PROGRAM_CHECK_TTL
        && *bin == config.bin
    {
        return (binary.clone(), git.clone());
    }
    let binary = check_binary(config, codex_home).await;
    let git = check_git().await;
    *cache = Some((
        Instant::now(),
        config.bin.clone(),
        binary.clone(),
        git.clone(),
    ));
    (binary, git)
}

async fn check_git() -> Value {
    let mut command = tokio::process::Command::new("git");
    command
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let output = match crate::reaper::spawn(&mut command) {
        Ok(child) => {
            let pid = child.id();
            let output = tokio::time::timeout(VERSION_TIMEOUT, child.wait_with_output()).await;
            crate::reaper::forget(pid);
            output
        }
        Err(e) => {
            return json!({ "ok": false, "problem": format!("failed to run git: {e}"), "remedy": "install git" });
        }
    };
    match output {
        Ok(Ok(out)) if out.status.success() => {
            json!({ "ok": true, "version": String::from_utf8_lossy(&out.stdout).trim() })
        }
        _ => json!({ "ok": false, "problem": "`git --version` failed", "remedy": "install git" }),
    }
}

/// A config.toml that does not parse makes every run fail before it starts.
fn check_config_toml(config: &CodexConfig) -> Value {
    let Some(path) = config.config_toml_path().filter(|p| p.exists()) else {
        return json!({ "ok": true, "present": false });
    };
    let parsed = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            text.parse::<toml::Table>()
                .map(|_| ())
                .map_err(|e| e.message().to_owned())
        });
    match parsed {
        Ok(()) => json!({ "ok": true, "present": true }),
        Err(why) => json!({
            "ok": false, "present": true, "reason": "cli_error",
            "problem": format!("{} is not valid TOML: {why}", path.display()),
            "remedy": "fix config.toml in the Secret, or remove it",
        }),
    }
}

pub(super) async fn check_binary(config: &CodexConfig, codex_home: &std::path::Path) -> Value {
    let path = config.bin.display().to_string();
    let problem = |problem: String| {
        json!({ "ok": false, "path": path, "problem": problem,
                "remedy": "install the Codex CLI (npm install -g @openai/codex) or set HB_CODEX_BIN to its path" })
    };
    if let Err(e) = std::fs::create_dir_all(codex_home) {
        return problem(format!("failed to create {}: {e}", codex_home.display()));
    }

    let mut command = tokio::process::Command::new(&config.bin);
    command
        .arg("--version")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", codex_home)
        .env("CODEX_HOME", codex_home)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let child = match crate::reaper::spawn(command.stdout(Stdio::piped()).stderr(Stdio::null())) {
        Ok(child) => child,
        Err(e) => return problem(format!("failed to run {path}: {e}")),
    };
    let pid = child.id();
    let result = tokio::time::timeout(VERSION_TIMEOUT, child.wait_with_output()).await;
    crate::reaper::forget(pid);
    match result {
        Ok(Ok(out)) if out.status.success() => {
            json!({ "ok": true, "path": path, "version": String::from_utf8_lossy(&out.stdout).trim() })
        }
        Ok(Ok(out)) => problem(format!("`codex --version` failed with {}", out.status)),
        Ok(Err(e)) => problem(format!("failed to run {path}: {e}")),
        Err(_) => problem(format!(
            "`codex --version` did not answer within {}s",
            VERSION_TIMEOUT.as_secs()
        )),
    }
}

/// Judges the login as the next run would get it (the working copy while it is current with
/// the Secret), and what the latest run found: a login a run found dead is reported until the
/// Secret changes. `state` is `ok`, `degraded` (it works, but will stop within `warn_window`
/// unless a person acts) or `unhealthy`.
pub(super) fn check_credentials(login: &WorkingCopy, warn_window: Duration) -> Value {
    let mut body = judge_credentials(login, warn_window);
    if let Some(template) = login.home_template_status() {
        body["home_template"] = template;
    }
    let state = match (body["ok"] == true, body.get("warning").is_some()) {
        (false, _) => "unhealthy",
        (true, true) => "degraded",
        (true, false) => "ok",
    };
    body["state"] = json!(state);
    body
}

fn judge_credentials(login: &WorkingCopy, warn_window: Duration) -> Value {
    let auth = match login.current() {
        Ok(auth) => auth,
        Err(e) => return json!({ "ok": false, "reason": e.reason(), "problem": e.to_string() }),
    };
    let now = OffsetDateTime::now_utc();
    let facts = &auth.facts;
    let mut body = json!({
        "ok": facts.usable_at(now),
        "path": auth.path.display().to_string(),
        "facts": facts,
        "versions": login.facts(),
    });
    if let Some(write_back) = login.write_back_status() {
        if write_back["ok"] == false {
            body["warning"] = json!(
                "the last refreshed login could not be written back to its Secret: a pod that \
                 starts from the Secret will find a spent refresh token (see write_back.last_attempt)"
            );
        }
        body["write_back"] = write_back;
    }
    let expired = facts.access_token_expires_at.is_some_and(|exp| exp <= now);
    if let Some(reason) = login.dead_reason() {
        body["ok"] = json!(false);
        body["reason"] = json!(reason);
        body["problem"] = json!("the latest run could not authenticate with this login");
        body["remedy"] = json!(RELOGIN);
    } else if facts.auth_mode == AuthMode::Chatgpt && expired && !facts.refresh_token_present {
        body["reason"] = json!("credentials_expired");
        body["problem"] =
            json!("the ChatGPT access token has expired and there is no refresh token");
        body["remedy"] = json!(RELOGIN);
    } else if facts.auth_mode == AuthMode::Chatgpt && expired {
        body["note"] =
            json!("the access token has expired; the CLI will refresh it on the next run");
    } else if facts.auth_mode == AuthMode::Chatgpt
        && !facts.refresh_token_present
        && let Some(expires_at) = facts.access_token_expires_at
        && expires_at - now <= warn_window
    {
        let left = (expires_at - now).whole_seconds();
        body["expires_in_s"] = json!(left);
        body["warning"] = json!(format!(
            "the access token expires in {left} s and there is no refresh token to renew it"
        ));
        body["remedy"] = json!(RELOGIN_BEFORE);
    }
    body
}

/// What a person should do before a login dies.
const RELOGIN_BEFORE: &str = "log in again before then: `codex login` on a workstation and \
     update the Secret, or POST /v1/credentials/codex/login";

/// What a person must do when a login is dead.
const RELOGIN: &str = "log in again: `codex login` on a workstation and update the Secret with \
     the new auth.json, or POST /v1/credentials/codex/login to log in through the bridge";
