//! The built-in profile adapters, `claude` and `gemini`: profiles like any mounted one, shipped
//! inside the binary (`builtin/*.toml`), with the operator's settings applied on top (the
//! executable, the secrets directory, a base URL, the user to run as).
//!
//! Expressing them as profiles keeps one model for every CLI: what is special about Claude
//! Code or Gemini CLI reads as data, each line with the observation behind it.

use std::collections::BTreeMap;

use super::profile::{Profile, ProfileError};
use crate::config::BuiltinConfig;

/// The shipped profiles: name, text, and the variable that takes a base URL.
const BUILTINS: &[(&str, &str, &str)] = &[
    (
        "claude",
        include_str!("builtin/claude.toml"),
        "ANTHROPIC_BASE_URL",
    ),
    (
        "gemini",
        include_str!("builtin/gemini.toml"),
        "GOOGLE_GEMINI_BASE_URL",
    ),
];

/// The built-in profiles with their settings applied; `settings` finds a built-in's by name.
pub fn profiles(
    settings: impl Fn(&str) -> BuiltinConfig,
) -> Result<BTreeMap<String, Profile>, ProfileError> {
    let mut profiles = BTreeMap::new();
    for (name, text, base_url_var) in BUILTINS {
        let mut profile = Profile::parse(name, &format!("built-in {name}.toml"), text)?;
        let config = settings(name);
        if let Some(bin) = config.bin {
            profile.executable = bin;
        }
        if let Some(dir) = config.dir {
            profile.secrets_dir = Some(dir);
        }
        if let Some(url) = config.base_url {
            profile.env.insert((*base_url_var).to_owned(), url);
        }
        if let Some(run_as) = config.run_as {
            profile.run_as = Some(run_as);
        }
        profiles.insert((*name).to_owned(), profile);
    }
    Ok(profiles)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::adapter::profile::RunAs;

    #[test]
    fn the_shipped_profiles_parse_and_take_their_settings() {
        let profiles = profiles(|name| BuiltinConfig {
            bin: Some(PathBuf::from(format!("/opt/{name}"))),
            dir: Some(PathBuf::from(format!("/secrets/{name}"))),
            base_url: Some("http://127.0.0.1:9".into()),
            run_as: Some(RunAs { uid: 7, gid: 8 }),
        })
        .unwrap();
        let claude = &profiles["claude"];
        assert_eq!(claude.executable, PathBuf::from("/opt/claude"));
        assert_eq!(claude.env["ANTHROPIC_BASE_URL"], "http://127.0.0.1:9");
        assert_eq!(claude.run_as, Some(RunAs { uid: 7, gid: 8 }));
        assert_eq!(
            claude.secret_path("api_key".as_ref()),
            PathBuf::from("/secrets/claude/api_key")
        );
        assert_eq!(
            profiles["gemini"].env["GOOGLE_GEMINI_BASE_URL"],
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn without_settings_claude_runs_as_nobody_and_gemini_as_the_bridge() {
        let profiles = profiles(|_| BuiltinConfig::default()).unwrap();
        assert_eq!(
            profiles["claude"].run_as,
            Some(RunAs {
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(profiles["gemini"].run_as, None);
    }
}
