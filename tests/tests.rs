//! The integration test binary (one binary, as ripgrep and garage do): one module per area.

// Harness: TestEnv (temp dir, fixture copy, config, guardian runner), db helpers, service runner.
mod util;

// Every config/*.toml parses; the example documents every key.
mod config;
// The restore drill: verified on success; bit rot, corruption and count mismatches fail it.
mod drill;
// Webhook and heartbeat against a local listener: payload, retries, time limits, secrets.
mod notify;
// `prune` through the binary: dry run vs real, orphans, holds.
mod prune;
// Retention as a pure function: table tests and safety properties.
mod retention;
// `guardian run`: schedules, metrics, SIGTERM, grace period, second signal, config errors.
mod service;
// `verify`: bit rot found without SQLite, per snapshot.
mod verify;
