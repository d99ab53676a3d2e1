//! The `csi-fencer` binary: command line edge over the library.

mod cli;

use clap::Parser;

use cli::exit::{self, Failure};
use cli::{Cli, Command};
use csi_fencer::platform;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are not errors; usage errors exit 1 like sg3_utils.
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let result = match &cli.command {
        Command::Pr(a) => cli::pr::run(a, &cli.global, &platform::native()),
        Command::Inspect(a) => cli::inspect::run(a, &cli.global, &platform::native()),
        Command::Key(a) => cli::key::run(a, cli.global.json),
        Command::Acquire(a) => cli::fence::run(cli::fence::Op::Acquire, a, &cli.global),
        Command::Release(a) => cli::fence::run(cli::fence::Op::Release, a, &cli.global),
        Command::Check(a) => cli::fence::run(cli::fence::Op::Check, a, &cli.global),
        Command::Run(a) => cli::run::run(a, &cli.global),
        Command::Controller(a) => cli::controller::run(a, &cli.global),
        Command::Crd => cli::crd::run(),
        Command::Ctl(a) => cli::ctl::run(a, cli.global.json),
    };
    let code = match result {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            report(&error, cli.global.json, code);
            code
        }
    };
    std::process::exit(code);
}

fn report(error: &anyhow::Error, json: bool, code: i32) {
    if json {
        let v = serde_json::json!({ "error": format!("{error:#}"), "exit_code": code });
        println!("{v}");
    } else {
        eprintln!("error: {error:#}");
    }
}
