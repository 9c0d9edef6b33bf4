//! Test support for headless-bridge: loopback stand-ins for the clouds the bridge and its CLIs
//! talk to, so integration tests and the demo run on one machine with no network.
//!
//! Each stand-in serves real protocol on 127.0.0.1 at a port the kernel picks and stops when
//! its handle is dropped:
//! - [`model::FakeModel`], the OpenAI Responses API as the real Codex CLI uses it;
//! - [`anthropic::FakeAnthropic`], the Anthropic Messages API as Claude Code uses it;
//! - [`gemini::FakeGemini`], the Gemini API as Gemini CLI uses it;
//! - [`github::FakeGitHub`], the GitHub REST API as `gh` reaches it through a proxy;
//! - [`netlify::FakeNetlify`], the Netlify API as the `netlify` CLI deploys through it;
//! - [`rest::FakeRest`], any REST API answering one canned response (a refused token);
//! - [`git::GitServer`], git smart HTTP backed by real `git http-backend`, optionally behind
//!   basic authentication, with fixtures for submodules;
//! - [`git::SshGitServer`], git over ssh through a real OpenSSH `sshd` with keys of its own;
//! - [`files::FileServer`], static downloads that count their hits;
//! - [`faults::FaultServer`], downloads that misbehave on purpose (broken ranges, dropped
//!   connections, redirects, HTML error pages, trickling).
//!
//! [`kube::KubeCluster`] is a real Kubernetes control plane (etcd, kube-apiserver and
//! kube-controller-manager) on loopback, where the machine has the binaries.
//!
//! [`demo::Demo`] starts all three with the fixtures of the headless-bridge demo.
//!
//! Panics, not errors, report broken test environments: a test cannot carry on without them.

pub mod agent_api;
pub mod anthropic;
pub mod demo;
pub mod faults;
pub mod files;
pub mod gemini;
pub mod git;
pub mod github;
pub mod kube;
mod loopback;
pub mod model;
pub mod netlify;
pub mod rest;
