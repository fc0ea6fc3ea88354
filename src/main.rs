//! The `strata` command: parses the command line ([`cli`]) and runs it; errors print as
//! `strata: error: …` with exit code 2 (1 means the command ran and found problems).

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    cli::init_logging(matches!(args.command, cli::Command::Serve));
    match cli::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("strata: error: {e:#}");
            std::process::exit(2);
        }
    }
}
