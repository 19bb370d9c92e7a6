//! Every failure line reads `guardian: error: …`, names what failed and ends with what to do;
//! with `--log-format json` every line on stderr is a JSON object, fatal errors and command-line
//! (usage) errors included.

use crate::util::{Run, TestEnv};

/// One failure path: how to set it up, the command, its exit code, and what its error line
/// must say (the thing that failed and the fix).
struct Case {
    name: &'static str,
    setup: fn(&TestEnv),
    args: &'static [&'static str],
    code: i32,
    says: &'static [&'static str],
}

fn nothing(_: &TestEnv) {}

fn second_db_missing(env: &TestEnv) {
    env.write_config("\n[[databases]]\nname = \"shop\"\npath = \"missing.db\"\n");
}

fn damaged_source(env: &TestEnv) {
    crate::silent_damage::damage_index(env);
}

fn bad_config(env: &TestEnv) {
    env.write_config("colour = \"blue\"\n");
}

fn staging_is_a_file(env: &TestEnv) {
    std::fs::write(env.path("staging"), "not a folder").unwrap();
}

const CASES: &[Case] = &[
    Case {
        name: "a config key that does not exist",
        setup: bad_config,
        args: &["list"],
        code: 2,
        says: &["config", "colour"],
    },
    Case {
        name: "a missing source",
        setup: second_db_missing,
        args: &["backup", "--db", "shop"],
        code: 2,
        says: &[
            "backup of shop failed",
            "missing.db",
            "check databases[].path",
        ],
    },
    Case {
        name: "a damaged source",
        setup: damaged_source,
        args: &["backup"],
        code: 1,
        says: &[
            "backup of market failed",
            "`guardian restore --latest --db market`",
        ],
    },
    Case {
        name: "a restore with nothing stored",
        setup: nothing,
        args: &["restore", "--latest"],
        code: 1,
        says: &["market", "guardian backup"],
    },
    Case {
        name: "a drill with nothing stored",
        setup: nothing,
        args: &["drill"],
        code: 1,
        says: &["drill of market failed", "guardian backup --db market"],
    },
    Case {
        name: "a verify with nothing stored",
        setup: nothing,
        args: &["verify"],
        code: 1,
        says: &["no snapshots of market", "`guardian backup --db market`"],
    },
    Case {
        name: "a prune whose lock cannot be taken",
        setup: staging_is_a_file,
        args: &["prune"],
        code: 2,
        says: &["prune of market failed", "staging", "`guardian doctor`"],
    },
    Case {
        name: "a service with nothing to schedule",
        setup: nothing,
        args: &["run"],
        code: 2,
        says: &["nothing to schedule", "backup = "],
    },
    Case {
        name: "a command line without a selector",
        setup: nothing,
        args: &["restore"],
        code: 2,
        says: &["--latest"],
    },
    Case {
        name: "an unknown flag",
        setup: nothing,
        args: &["list", "--colour"],
        code: 2,
        says: &["--colour"],
    },
];

fn run_case(c: &Case, json: bool) -> Run {
    let env = TestEnv::new();
    (c.setup)(&env);
    let mut args: Vec<&str> = if json {
        vec!["--log-format", "json"]
    } else {
        Vec::new()
    };
    args.extend(c.args);
    env.run(&args).expect_code(c.code)
}

#[test]
fn every_failure_line_names_the_thing_and_the_fix() {
    for c in CASES {
        let r = run_case(c, false);
        let lines = r.error_lines();
        assert!(
            !lines.is_empty(),
            "{}: no error line:\n{}",
            c.name,
            r.stderr
        );
        for l in &lines {
            assert!(
                l.starts_with("guardian: error: ") || l.starts_with("guardian: warning: "),
                "{}: {l}",
                c.name
            );
        }
        let line = r
            .error_lines()
            .into_iter()
            .find(|l| l.starts_with("guardian: error: "))
            .unwrap_or_else(|| panic!("{}: no `guardian: error:` line:\n{}", c.name, r.stderr));
        for s in c.says {
            assert!(line.contains(s), "{}: {s:?} not in {line}", c.name);
        }
    }
}

#[test]
fn with_log_format_json_every_stderr_line_is_json() {
    for c in CASES {
        let r = run_case(c, true);
        let mut errors = Vec::new();
        for l in r.stderr.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}\n{}", c.name, r.stderr));
            assert!(
                v["level"].is_string() && v["timestamp"].is_string(),
                "{}: {l}",
                c.name
            );
            if v["level"] == "ERROR" && v["target"] == "guardian" {
                errors.push(v["message"].as_str().unwrap_or_default().to_string());
            }
        }
        let line = errors
            .iter()
            .find(|m| c.says.iter().all(|s| m.contains(s)))
            .unwrap_or_else(|| panic!("{}: no error saying {:?}:\n{}", c.name, c.says, r.stderr));
        assert!(!line.starts_with("guardian:"), "{}: {line}", c.name);
    }
}
