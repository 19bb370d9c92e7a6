//! Entry point: parse the command line, set up logging, load the config, run the command, and
//! map the outcome to an exit code (see `error.rs`). Only this file exits the process.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use guardian::app::App;
use guardian::cli::{self, Cli, Command, LogFormat};
use guardian::config::Config;
use guardian::error::Error;
use guardian::output;

fn main() -> ExitCode {
    steady_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are not errors; usage errors exit 2 (clap's own convention).
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            usage_error(&e);
            return ExitCode::from(2);
        }
    };
    init_logging(&cli);
    let code = match run(cli) {
        Ok(code) => code,
        Err(Error::Reported(code)) => code,
        Err(e) => {
            output::error(cli::describe_error(&e));
            e.exit_code()
        }
    };
    // A reader that went away (EPIPE) is not an error; any other failed write of the results
    // is (the output is incomplete), so it is said, and the run fails.
    match output::finish() {
        Some(why) => {
            output::error(format_args!(
                "write results to stdout: {why}; the output above is incomplete"
            ));
            ExitCode::from(code.max(2))
        }
        None => ExitCode::from(code),
    }
}

/// The glibc setting that keeps guardian's peak RSS flat, and the value guardian runs with.
const MMAP_THRESHOLD: (&str, &str) = ("MALLOC_MMAP_THRESHOLD_", "131072");

/// Start again with a fixed glibc mmap threshold, unless one is set.
///
/// glibc raises its mmap threshold each time a large block it had mapped is freed, up to 32
/// MiB; from then on guardian's 1–5 MiB buffers (compressed members, S3 parts) come from the
/// heaps of up to 16 arenas and stay resident after they are freed. A fixed threshold maps
/// every block over 128 KiB and gives it back on free: a backup of 1 GiB to a local and an S3
/// store peaks at 55 MiB instead of 92 MiB, at the same speed (docs/PERFORMANCE.md). glibc
/// reads it only from the environment at start-up (`mallopt` would need `unsafe`), so the
/// process replaces itself once, keeping its pid, arguments and open files. When that is not
/// possible (no `/proc/self/exe`), guardian runs on as it is.
fn steady_memory() {
    use std::os::unix::process::CommandExt;
    let (name, value) = MMAP_THRESHOLD;
    if std::env::var_os(name).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    // `exec` returns only when it failed; then go on in this process.
    let _ = std::process::Command::new(&exe)
        .arg0(argv0)
        .args(args)
        .env(name, value)
        .exec();
}

fn run(cli: Cli) -> guardian::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start async runtime", "-", e))?;
    if let Some(outcome) = runtime.block_on(cli::dispatch_standalone(
        cli.config.as_deref(),
        &cli.command,
    )) {
        return outcome;
    }
    if let Command::Doctor = cli.command {
        // doctor reports a broken config as a failed check line, so it loads the config itself.
        return Ok(runtime
            .block_on(guardian::doctor::run(cli.config.as_deref()))
            .print());
    }
    let path = Config::locate(cli.config.as_deref())?;
    let config = Config::load(&path)?;
    let outcome = runtime.block_on(async {
        let app = App::open(config).await?;
        cli::dispatch(&app, cli.command).await
    });
    // Blocking work a stopped service cancelled (e.g. a SQLite copy in progress) must not hold
    // the exit: the manifest-last design makes abandoning it safe.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    // An interrupted restore's abandoned check may have re-created a sidecar of its staging file.
    guardian::restore::remove_interrupted_staging();
    outcome
}

/// A command line clap refused: `guardian: error: {clap's message}`, then clap's usage lines;
/// with `--log-format json` (looked for in the raw arguments, since they did not parse) one
/// JSON line holding both.
fn usage_error(e: &clap::Error) {
    let text = e.render().to_string();
    // Paragraphs: the error (its first line may continue on indented lines), then the usage.
    let mut paragraphs = text.split("\n\n").map(str::trim).filter(|p| !p.is_empty());
    let first = paragraphs
        .next()
        .unwrap_or("invalid command line")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    let rest: Vec<&str> = paragraphs.collect();
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--log-format=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--log-format" && w[1] == "json");
    if json {
        output::set_json(true);
        let usage: Vec<String> = rest.iter().map(|p| p.replace('\n', " ")).collect();
        output::error(format_args!("{first}; {}", usage.join("; ")));
        return;
    }
    output::error(first);
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("\n{}\n", rest.join("\n\n")).as_bytes(),
    );
}

fn init_logging(cli: &Cli) {
    output::set_json(cli.log_format == LogFormat::Json);
    // guardian's own events at the chosen level; dependencies one notch quieter, so -vv shows
    // our trace without a flood from the HTTP stack.
    // The AWS credential chain warns about every provider it tries (IMDS, profiles...) with
    // multi-line debug dumps; guardian reports a missing credential itself, in one line.
    let default = match (cli.quiet, cli.verbose) {
        // The scheduler library logs its internals at info.
        (true, _) => "warn,aws_config=error",
        (false, 0) => "info,aws_config=error,tokio_cron_scheduler=warn",
        (false, 1) => "guardian=debug,info,aws_config=error,tokio_cron_scheduler=warn",
        (false, _) => "guardian=trace,debug",
    };
    // Some lines of the SDK print the request's identity, the access key id with it (the
    // secret is redacted): endpoint resolution at debug; at trace, the resolved identity, the
    // signing parameters and the client's components (with the identity cache). Those targets
    // stay a level above, whatever the filter asks for.
    let filter = [
        "aws_smithy_runtime::client::orchestrator=debug",
        "aws_smithy_runtime::client::orchestrator::endpoints=info",
        "aws_sigv4::http_request::sign=debug",
    ]
    .into_iter()
    .fold(
        EnvFilter::try_from_env("GUARDIAN_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
        |f, d| f.add_directive(d.parse().expect("a valid directive")),
    );
    let interactive =
        std::io::stderr().is_terminal() && cli.log_format == LogFormat::Text && !cli.quiet;
    guardian::progress::set_interactive(interactive);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // When stderr is gone (a dead log pipe), the default reports that with eprintln!, which
        // panics in whatever task logged: a service would die mid-job. Drop the lines instead.
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .with_target(cli.verbose > 0);
    match cli.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
