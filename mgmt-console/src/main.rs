//! `bmctl` entry point: parse, run, and turn failures into a message on
//! stderr and a non-zero exit code (see `bmctl --help`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = bmctl::cli::Cli::parse();
    let json = cli.json;
    match bmctl::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if f.silent() {
                // A remote command's own exit status: it said what it had to.
            } else if json {
                eprintln!("{}", serde_json::json!({"error": format!("{:#}", f.error), "exit_code": f.code}));
            } else {
                eprintln!("bmctl: error: {:#}", f.error);
            }
            ExitCode::from(f.code)
        }
    }
}
