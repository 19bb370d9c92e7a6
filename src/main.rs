//! Entry point: parse the command line, set up logging, load the config, run the command, and
//! map the outcome to an exit code (see `error.rs`). Only this file exits the process.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use guardian::app::App;
use guardian::cli::{self, Cli, Command, LogFormat};
use guardian::config::Config;
use guardian::error::{chain, Error};
use guardian::output;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; usage errors exit 2 (clap's own convention).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_logging(&cli);
    let code = match run(cli) {
        Ok(code) => code,
        Err(Error::Reported(code)) => code,
        Err(e) => {
            output::error_line(format_args!("guardian: error: {}", chain(&e)));
            e.exit_code()
        }
    };
    // A reader that went away (EPIPE) is not an error; any other failed write of the results
    // is (the output is incomplete), so it is said, and the run fails.
    match output::finish() {
        Some(why) => {
            output::error_line(format_args!(
                "guardian: error: write results to stdout: {why}; the output above is incomplete"
            ));
            ExitCode::from(code.max(2))
        }
        None => ExitCode::from(code),
    }
}

fn run(cli: Cli) -> guardian::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start async runtime", "-", e))?;
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

fn init_logging(cli: &Cli) {
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
    let filter =
        EnvFilter::try_from_env("GUARDIAN_LOG").unwrap_or_else(|_| EnvFilter::new(default));
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
