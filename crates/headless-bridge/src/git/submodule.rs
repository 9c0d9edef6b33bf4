//! Submodules, on request: every URL checked by the URL policy before anything is fetched,
//! then each one fetched shallow, and fetched whole only when shallow cannot reach its commit.
//!
//! `git submodule init` first writes each submodule's URL, relative ones resolved against the
//! superproject, into the clone's own config; those resolved URLs are what the policy judges,
//! so `../other.git` is checked as the host it really names. A shallow fetch asks for the
//! branch tip and then for the pinned commit; a server that only serves advertised tips
//! refuses the second when the commit is not a tip (protocol v0 without
//! `uploadpack.allowReachableSHA1InWant`; v2 serves any reachable commit), and then that
//! submodule's history is fetched whole. Nested submodules are taken level by level, each
//! level's URLs checked the same way before it is fetched (never `--recursive`, which would
//! fetch a nested URL unchecked), down to [`MAX_DEPTH`] levels.

use std::path::{Path, PathBuf};

use super::{Git, GitError};
use crate::policy::UrlPolicy;

/// How many levels of nested submodules are followed; projects rarely nest more than two.
pub const MAX_DEPTH: usize = 4;

/// A submodule that was checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submodule {
    pub path: String,
    pub url: String,
    /// Whether the shallow fetch failed and the whole history was fetched instead.
    pub full_fetch: bool,
}

/// Checks and checks out the submodules of the clone in `dir`, and theirs, level by level.
/// Paths in the answer are relative to `dir`.
pub(super) async fn update(
    git: &Git,
    policy: &UrlPolicy,
    dir: &Path,
) -> Result<Vec<Submodule>, GitError> {
    let mut done = Vec::new();
    let mut pending: Vec<(PathBuf, String, usize)> = vec![(dir.to_owned(), String::new(), 1)];
    while let Some((repo_dir, prefix, depth)) = pending.pop() {
        for mut submodule in update_level(git, policy, &repo_dir).await? {
            let sub_dir = repo_dir.join(&submodule.path);
            submodule.path = format!("{prefix}{}", submodule.path);
            if depth < MAX_DEPTH {
                pending.push((sub_dir, format!("{}/", submodule.path), depth + 1));
            } else if sub_dir.join(".gitmodules").is_file() {
                tracing::warn!(path = %submodule.path, "nested submodules past the depth limit left out");
            }
            done.push(submodule);
        }
    }
    Ok(done)
}

/// Checks and checks out the submodules of the repository in `dir`, one level.
async fn update_level(
    git: &Git,
    policy: &UrlPolicy,
    dir: &Path,
) -> Result<Vec<Submodule>, GitError> {
    if !dir.join(".gitmodules").is_file() {
        return Ok(Vec::new());
    }
    git.run_in(dir, &["submodule", "init"]).await?;
    let mut submodules = Vec::new();
    for (name, url) in configured_urls(git, dir).await? {
        if let Err(e) = policy.check_repo(&url).await {
            let reason = e.to_string();
            return Err(GitError::SubmoduleUrl { url, reason });
        }
        let key = format!("submodule.{name}.path");
        let path = git
            .run_in(dir, &["config", "--file", ".gitmodules", "--get", &key])
            .await?;
        let path = String::from_utf8_lossy(&path).trim().to_owned();
        submodules.push(Submodule {
            path,
            url,
            full_fetch: false,
        });
    }
    for submodule in &mut submodules {
        submodule.full_fetch = fetch_one(git, dir, &submodule.path).await?;
    }
    Ok(submodules)
}

/// Checks out one submodule, shallow if possible; answers whether it needed a full fetch.
async fn fetch_one(git: &Git, dir: &Path, path: &str) -> Result<bool, GitError> {
    let shallow = ["submodule", "update", "--depth", "1", "--", path];
    match git.network_in(dir, &shallow).await {
        Ok(_) => return Ok(false),
        Err(GitError::Failed { stderr, .. }) => {
            tracing::info!(
                path,
                stderr,
                "a shallow submodule fetch failed; fetching it whole"
            );
        }
        Err(other) => return Err(other),
    }
    // The shallow clone of the branch tip is there; `submodule update` alone would fetch
    // shallow again, so the history is deepened first.
    let sub_dir = dir.join(path);
    if sub_dir.join(".git").exists() {
        let unshallow = ["fetch", "--unshallow", "--no-tags", "origin"];
        git.network_in(&sub_dir, &unshallow).await?;
    }
    let full = ["submodule", "update", "--", path];
    git.network_in(dir, &full).await?;
    Ok(true)
}

/// `(name, url)` of each submodule in the clone's config, after `submodule init`.
async fn configured_urls(git: &Git, dir: &Path) -> Result<Vec<(String, String)>, GitError> {
    let args = [
        "config",
        "--local",
        "-z",
        "--get-regexp",
        r"^submodule\..*\.url$",
    ];
    let listing = match git.run_in(dir, &args).await {
        Ok(listing) => listing,
        // `git config --get-regexp` exits 1 when nothing matches.
        Err(GitError::Failed { stderr, .. }) if stderr.is_empty() => return Ok(Vec::new()),
        Err(other) => return Err(other),
    };
    Ok(parse_url_listing(&String::from_utf8_lossy(&listing)))
}

/// Parses `git config -z` output: entries `key\nvalue` separated by NUL.
fn parse_url_listing(listing: &str) -> Vec<(String, String)> {
    listing
        .split('\0')
        .filter_map(|entry| entry.split_once('\n'))
        .filter_map(|(key, url)| {
            let name = key.strip_prefix("submodule.")?.strip_suffix(".url")?;
            Some((name.to_owned(), url.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_listings_are_parsed_with_dotted_names() {
        let listing = "submodule.lib.url\nhttps://h/lib.git\0submodule.a.b.url\n../b.git\0";
        assert_eq!(
            parse_url_listing(listing),
            vec![
                ("lib".to_owned(), "https://h/lib.git".to_owned()),
                ("a.b".to_owned(), "../b.git".to_owned()),
            ]
        );
    }
}
