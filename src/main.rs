//! The `portcullis` binary: parses the command line and runs a subcommand.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    portcullis::cli::Cli::parse().run()
}
