//! The integration test binary (one binary, as ripgrep and garage do): one module per area.

// Harness: TestEnv (temp dir, fixture copy, config, guardian runner), db helpers.
mod util;
