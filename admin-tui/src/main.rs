//! `chat-admin`: parses flags and environment, asks for a missing password, runs the console.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use admin_tui::auth::{Credentials, Secret};
use anyhow::{Context, bail};
use clap::Parser;
use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};

/// The support-chat admin console: live sessions, knowledge-base reloads, cleanups, stats.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The chat server's base URL.
    #[arg(long, env = "CHAT_SERVER_URL", default_value = "http://127.0.0.1:8000")]
    server: String,
    /// Admin account name.
    #[arg(long, env = "ADMIN_USERNAME")]
    username: Option<String>,
    /// Admin password; asked for on the terminal when missing.
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A ready access token instead of a username and password (not refreshed).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, conflicts_with_all = ["username", "password"])]
    token: Option<String>,
}

fn main() -> ExitCode {
    match start() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-admin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    admin_tui::tls::install_provider();
    let credentials = credentials(cli.username, cli.password, cli.token)?;
    let config = admin_tui::Config {
        server: cli.server,
        credentials,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(admin_tui::run(config))
}

fn credentials(
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
) -> anyhow::Result<Credentials> {
    if let Some(token) = token {
        return Ok(Credentials::Token(Secret::new(token)));
    }
    let interactive = std::io::stdin().is_terminal();
    let username = match username {
        Some(u) => u,
        None if interactive => prompt_line("Admin username: ")?,
        None => bail!("no admin username: pass --username or set ADMIN_USERNAME"),
    };
    let password = match password {
        Some(p) => Secret::new(p),
        None if interactive => prompt_hidden(&format!("Password for {username}: "))?,
        None => bail!(
            "no admin password: pass --password or set ADMIN_PASSWORD (stdin is not a terminal to ask on)"
        ),
    };
    Ok(Credentials::Password { username, password })
}

fn prompt_line(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let line = line.trim().to_owned();
    if line.is_empty() {
        bail!("no username given");
    }
    Ok(line)
}

/// Reads a line without echo: raw mode turns echo off, and we print nothing per key.
fn prompt_hidden(prompt: &str) -> anyhow::Result<Secret> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    crossterm::terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
    let read = read_hidden();
    // Whatever happened, give the terminal back its echo before anything else prints.
    let _ = crossterm::terminal::disable_raw_mode();
    eprintln!();
    read
}

fn read_hidden() -> anyhow::Result<Secret> {
    let mut password = String::new();
    loop {
        let Event::Key(key) = crossterm::event::read()? else {
            continue;
        };
        if key.kind == KeyEventKind::Release {
            continue;
        }
        match key.code {
            KeyCode::Enter => return Ok(Secret::new(password)),
            KeyCode::Char('c' | 'd') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                bail!("cancelled")
            }
            KeyCode::Esc => bail!("cancelled"),
            KeyCode::Backspace => {
                password.pop();
            }
            KeyCode::Char(c) => password.push(c),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_token_excludes_a_password() {
        let both = Cli::try_parse_from(["chat-admin", "--token", "t", "--password", "p"]);
        assert!(both.is_err());
        let cli =
            Cli::try_parse_from(["chat-admin", "--server", "http://h:1", "--token", "t"]).unwrap();
        assert_eq!(cli.server, "http://h:1");
        assert!(matches!(
            credentials(cli.username, cli.password, cli.token).unwrap(),
            Credentials::Token(_)
        ));
    }
}
