//! End-to-end tests: the real bridge, serving on loopback, running the real Codex CLI (pinned,
//! installed by `scripts/install-codex.sh`) against loopback stand-ins from `testkit`: a fake
//! model speaking the Responses API, real git over smart HTTP, and a static file server.

mod support;

mod agent_clis;
mod api;
mod cli_profiles;
mod codex_runs;
mod example_profiles;
mod health;
mod restart;
mod service;
