//! The integration test binary (one binary, as ripgrep and garage do): one module per area.

// Harness: TestEnv (temp dir, fixture copy, config, guardian runner), db helpers, service runner.
mod util;

// The src/ module graph has no import cycles.
mod architecture;
// Failure lines: `guardian: error:`, the thing and the fix; all JSON with --log-format json.
mod errors;
// Round trips, live writers, damaged snapshots, restores over live databases.
mod backup_restore;
// Bad input: one clear line, the documented exit code, no panic; CLI contract fields.
mod cli;
// Hostile inputs: FIFOs, sockets, devices and folders as databases or targets, non-SQLite
// files, hot journals, targets inside the store: refused at once, nothing hangs or changes.
mod inputs;
// Install and set-up: completions, man page, `guardian init`, systemd units, alert rules.
mod install;
// Every config/*.toml parses and validates; the example documents every key.
mod config;
// SIGKILL sweeps over backup and restore: nothing partial, old-or-new, leftovers cleaned.
mod crash;
// `diff`: rows only in FROM/TO and changed, by key; --sql round trip; damaged files read
// past the damage and left untouched; bad sides.
mod diff;
// The restore drill: verified on success; bit rot, corruption and count mismatches fail it;
// the rotation of older snapshots (property tests of the choice, drills through the binary).
mod drill;
// Incremental snapshots: only changed pages stored, each restorable from its own manifest,
// consistent under a writer, fallbacks to a full and to older snapshots, prune keeps what
// kept snapshots need.
mod incremental;
// age encryption: ciphertext only in the store, fail closed without the right key.
mod encryption;
// Property tests of the parsers that read untrusted store contents (keys, manifests).
mod fuzz;
// Webhook and heartbeat against a local listener: payload, retries, time limits, secrets.
mod notify;
// `prune` through the binary: dry run vs real, orphans, holds.
mod prune;
// Retention as a pure function: table tests and safety properties.
mod retention;
// What status, list and restore --latest believe: failed attempts, unreadable manifests,
// snapshots dated in the future, drill verdicts that do not parse.
mod status;
// The canary sweep: no secret in any output, stored object or metric, at trace level.
mod secrets;
// `guardian run`: schedules, metrics, SIGTERM, grace period, second signal, config errors.
mod service;
// Damage quick_check cannot see: refused by default; retention keeps what came before it until
// a newer snapshot is proven; restore --check restores a broken index when nothing else passes.
mod silent_damage;
// The status page of `guardian run`: `/` and `/status.json` over HTTP, escaping.
mod status_page;
// Hard sources: fast writers in another process, open write transactions, a source removed mid-backup.
mod sources;
// Several stores, reading: list's STORES, restore/drill/prune across stores, fallbacks.
mod stores;
// `verify`: bit rot found without SQLite, per snapshot.
mod verify;
// `sync` between two stores (local + local, local + S3): fill, repair, dry run, chains base
// first, exit codes, a SIGKILL sweep, no secret in any output.
mod sync;
// In-process S3 server (s3s + s3s-fs, request log, faults) and the external one from GUARDIAN_TEST_S3_*.
mod s3_server;
// Storage contract suite: the same behaviours against local, in-process S3 and external S3.
mod storage;
// S3-only: wire format, faults in transit, throttling, cancellation, error hints, sweep.
mod s3_storage;
// The CLI against S3: backup, list, restore, damage fallback, doctor.
mod s3_cli;
// guardian against S3 under stress: bounded memory for a large database, SIGKILL mid-upload.
mod s3_limits;
// A fault-injecting TCP proxy between guardian and an S3 server (harness).
mod fault_proxy;
// Network faults through the proxy: refused, reset, 500/503, lost answers, stalls, slow answers.
mod network_faults;
// Store faults: S3 throttling (transient and persistent), a full or read-only local store.
mod store_faults;
// The store layout without guardian: scripts/rebuild.py rebuilds fulls and incrementals (docs/FORMAT.md).
mod incremental_format;
// Several stores, the backup side: every store written from one pass, a failed store missed
// loudly (exit 2) with the snapshot kept where it landed, incrementals only where their chain is.
mod stores_backup;
