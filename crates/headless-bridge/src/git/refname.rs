//! Branch and tag names as git itself accepts them (`git check-ref-format --allow-onelevel`,
//! see git-check-ref-format(1)), plus one rule of ours: no leading '-', so a name can never be
//! read as an option. Checked before any work starts; the tests hold the rules against the
//! real git.

/// Checks a branch or tag name the way `git check-ref-format --allow-onelevel` would, and
/// refuses names that begin with '-' so they can never be read as options.
pub fn check_ref_name(name: &str) -> Result<(), &'static str> {
    const FORBIDDEN: &[char] = &[' ', '~', '^', ':', '?', '*', '[', '\\'];
    if name.is_empty() || name.len() > 255 {
        return Err("must have 1 to 255 characters");
    }
    if name.starts_with('-') {
        return Err("must not begin with '-'");
    }
    if name
        .chars()
        .any(|c| c.is_control() || FORBIDDEN.contains(&c))
    {
        return Err("must not contain spaces, control characters or any of ~ ^ : ? * [ \\");
    }
    if name.contains("..") || name.contains("@{") || name.contains("//") || name == "@" {
        return Err("must not contain '..', '@{' or '//', nor be '@'");
    }
    if name.starts_with('/')
        || name.ends_with('/')
        || name.ends_with('.')
        || name.ends_with(".lock")
    {
        return Err("must not begin or end with '/', nor end with '.' or '.lock'");
    }
    if name
        .split('/')
        .any(|part| part.starts_with('.') || part.ends_with(".lock"))
    {
        return Err("no part between slashes may begin with '.' or end with '.lock'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use rstest::rstest;

    use super::*;

    /// What the installed git says of `name`. `check-ref-format` takes no `--`; the prefix
    /// keeps the argument from looking like an option.
    fn git_accepts(name: &str) -> bool {
        Command::new("git")
            .args(["check-ref-format", "--allow-onelevel"])
            .arg(format!("refs/heads/{name}"))
            .output()
            .expect("git is installed")
            .status
            .success()
    }

    #[rstest]
    #[case("main")]
    #[case("release/v1.2")]
    #[case("v1.0.0")]
    #[case("feature_x-y")]
    #[case("a.b")]
    #[case("user/topic/sub")]
    #[case("ünïcode")]
    fn accepts_ref_names_git_accepts(#[case] name: &str) {
        assert_eq!(check_ref_name(name), Ok(()));
        assert!(git_accepts(name), "git disagrees about {name:?}");
    }

    #[rstest]
    #[case("a..b")]
    #[case("a b")]
    #[case("a~1")]
    #[case("a^")]
    #[case("a:b")]
    #[case("a?")]
    #[case("a*")]
    #[case("a[b")]
    #[case("a\\b")]
    #[case("topic.lock")]
    #[case("topic/")]
    #[case("/topic")]
    #[case(".hidden")]
    #[case("a/.b")]
    #[case("a@{1}")]
    #[case("a//b")]
    #[case("tab\there")]
    #[case("del\x7f")]
    #[case("ends.")]
    #[case("a/b.lock/c")]
    fn refuses_ref_names_git_refuses(#[case] name: &str) {
        assert!(check_ref_name(name).is_err(), "{name:?} should be refused");
        assert!(!git_accepts(name), "git accepts {name:?}, so should we");
    }

    #[rstest]
    #[case("")]
    #[case("-b")]
    #[case("--upload-pack=x")]
    // git stores `refs/heads/@`, but `@` alone means HEAD wherever a revision is read.
    #[case("@")]
    fn refuses_what_could_be_misread(#[case] name: &str) {
        assert!(check_ref_name(name).is_err(), "{name:?} should be refused");
    }
}
