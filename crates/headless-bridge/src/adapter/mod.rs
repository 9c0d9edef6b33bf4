//! Adapters: how one CLI runs headless. Today the Codex CLI; the run engine asks an adapter
//! for the command line and environment of a run, and hands it the CLI's output to judge.

pub mod codex;
pub mod codex_events;
