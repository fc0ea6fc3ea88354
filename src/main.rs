//! The `strata` command: parses the command line ([`cli`]) and runs it; errors print as
//! `strata: error: …` with exit code 2 (1 means the command ran and found problems).

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if !matches!(args.command, cli::Command::Serve) {
        // a command whose output is piped into `head` stops quietly when the reader
        // goes away, as Unix tools do, instead of panicking on EPIPE (the server keeps
        // ignoring SIGPIPE: a peer closing its socket must not kill it)
        // SAFETY: signal(2) with SIG_DFL at start-up, before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    cli::init_logging(matches!(args.command, cli::Command::Serve));
    match cli::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("strata: error: {}", describe(&e));
            std::process::exit(2);
        }
    }
}

/// The error and its causes, each said once: a cause whose text its parent's message
/// already carries (errors that print their source) is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
