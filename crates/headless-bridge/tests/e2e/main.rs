//! End-to-end tests: the real bridge, serving on loopback, running the real CLIs (Codex,
//! Claude Code, Gemini, Vercel and Netlify pinned from npm by `scripts/install-codex.sh` and
//! `scripts/install-clis.sh`, gh from Debian) against loopback stand-ins from `testkit`: fakes
//! of the Responses, Anthropic Messages, Gemini, GitHub and Netlify APIs, real git over smart
//! HTTP and over ssh to a real OpenSSH server, and a static file server. The runs page is tested
//! in headless Chromium (Debian's) driven by playwright-core.

mod support;

mod agent_clis;
mod api;
mod cli_profiles;
mod client;
mod codex_home_template;
mod codex_runs;
mod codex_sessions;
mod example_profiles;
mod fetch;
mod health;
mod kube;
mod login;
mod login_relay;
mod mcp;
mod named_logins;
mod observability;
mod openapi;
mod restart;
mod runs_page;
mod service;
mod session_attach;
mod sessions;
mod shim;
mod spares;
mod ssh_repos;
mod workspaces;
