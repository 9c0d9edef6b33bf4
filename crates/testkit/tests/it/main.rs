//! Integration tests of the testkit's stand-ins, against real clients: the real Codex CLI for
//! the fake model, real `git` (and OpenSSH's client) for the git hosts, an HTTP client for the
//! file host, and the `hb-testkit` binary itself. Tests that need the pinned Codex CLI skip,
//! saying so, when `scripts/install-codex.sh` has not been run.

mod support;

mod codex;
mod demo;
mod files;
mod git;
mod model;
mod ssh;
