//! Every Codex login the bridge holds: the default one (HB_CODEX_DIR) and any named ones
//! (HB_CODEX_CREDENTIALS), each with its own working copy, single writer and login relay, so
//! that runs of two accounts never share tokens or wait for each other. Only the default login
//! is written back to a Kubernetes Secret (HB_CREDENTIAL_SECRET names one Secret).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::write_back::WriteBack;
use super::{LoginRelay, WorkingCopy};
use crate::config::Config;

/// The name a run gives, or none, for the login HB_CODEX_DIR holds.
pub const DEFAULT: &str = "default";

/// One login: its working copy and its relay.
pub struct Login {
    pub copy: Arc<WorkingCopy>,
    pub relay: LoginRelay,
}

/// The logins by name, the default one under [`DEFAULT`].
pub struct Logins {
    by_name: BTreeMap<String, Login>,
}

impl Logins {
    /// The logins `config` names. The default one keeps its working copy where a bridge
    /// with one login always kept it; named ones under `credentials/codex-named/<name>`.
    pub fn new(config: &Config) -> Self {
        let data_dir = &config.data_dir;
        let login = |mut copy: WorkingCopy| {
            if config.codex_home_template {
                copy = copy.with_home_template(config.shim_bin.clone());
            }
            // Logins' throw-away homes are named by their ids, so relays can share a parent.
            let relay = LoginRelay::new(
                data_dir,
                copy.config().clone(),
                config
                    .codex_login_issuer
                    .as_ref()
                    .map(|url| url.to_string()),
                config.shim_bin.clone(),
            );
            Login {
                copy: Arc::new(copy),
                relay,
            }
        };
        let mut by_name = BTreeMap::new();
        let mut default = WorkingCopy::new(data_dir, config.codex.clone());
        if let Some(secret) = &config.credential_secret {
            default = default.with_write_back(WriteBack::new(secret.clone(), &config.kube));
        }
        by_name.insert(DEFAULT.to_owned(), login(default));
        for (name, dir) in &config.codex_credentials {
            let mut codex = config.codex.clone();
            codex.dir = Some(dir.clone());
            codex.auth_file = None;
            let copy = WorkingCopy::at(
                data_dir.join("credentials").join("codex-named").join(name),
                codex,
            );
            by_name.insert(name.clone(), login(copy));
        }
        Self { by_name }
    }

    /// The login a run names, the default one for `None`.
    pub fn get(&self, name: Option<&str>) -> Option<&Login> {
        self.by_name.get(name.unwrap_or(DEFAULT))
    }

    /// The default login.
    pub fn default_login(&self) -> &Login {
        &self.by_name[DEFAULT]
    }

    /// Every login, the default one first, then the named ones by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Login)> {
        let default = (DEFAULT, self.default_login());
        std::iter::once(default).chain(
            self.by_name
                .iter()
                .filter(|(name, _)| *name != DEFAULT)
                .map(|(name, login)| (name.as_str(), login)),
        )
    }

    /// The names a run may give.
    pub fn names(&self) -> Vec<&str> {
        self.iter().map(|(name, _)| name).collect()
    }
}
