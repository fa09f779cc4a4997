//! The `portcullis` binary: parses the command line and runs a subcommand.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    portcullis::cli::Cli::parse().run()
}
