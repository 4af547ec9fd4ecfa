//! `sessiond throttle list | clear [--user NAME] [--ip IP]`

use super::{runtime, CliResult};
use crate::config::Config;
use crate::server::now;
use crate::stores;
use sessiond_axum::auth::throttle::describe;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Failure counters in force, and the back-offs they impose
    List {
        #[arg(long)]
        json: bool,
    },
    /// Lift back-offs: all of them, or a user's, or an address's
    Clear {
        /// Only counters of this account (case-insensitive)
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Only counters of this client address (an IPv6 address: its /64)
        #[arg(long, value_name = "IP")]
        ip: Option<String>,
    },
}

pub(super) fn run(config: Config, cmd: Command) -> CliResult {
    let rt = runtime()?;
    let stores = rt.block_on(stores::open(&config.database, &config.session_store))?;
    let now = now();
    let listed: Vec<_> = rt
        .block_on(stores.throttle.throttle_list(now))?
        .iter()
        .filter_map(|(k, r)| describe(k, r, now))
        .collect();
    match cmd {
        Command::List { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                println!(
                    "{:<11} {:<24} {:<40} {:>8}  LOCKED UNTIL",
                    "KIND", "ACCOUNT", "IP", "FAILURES"
                );
                for l in &listed {
                    println!(
                        "{:<11} {:<24} {:<40} {:>8}  {}",
                        l.kind,
                        l.account.as_deref().unwrap_or("-"),
                        l.ip.as_deref().unwrap_or("-"),
                        l.failures,
                        l.locked_until.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        Command::Clear { user, ip } => {
            // An IPv6 address is counted as its /64: `--ip 2001:db8::5` clears that /64.
            let ip = ip.as_deref().map(sessiond_axum::auth::throttle::ip_bucket);
            let user = user.map(|u| u.to_ascii_lowercase());
            let mut n = 0;
            for l in &listed {
                let by_user = user.as_ref().is_none_or(|u| l.account.as_ref() == Some(u));
                let by_ip = ip.as_ref().is_none_or(|i| l.ip.as_ref() == Some(i));
                // A filter for one dimension leaves counters of the other kind alone.
                let relevant =
                    (user.is_none() || l.account.is_some()) && (ip.is_none() || l.ip.is_some());
                if by_user
                    && by_ip
                    && relevant
                    && rt.block_on(stores.throttle.throttle_delete(&l.key))?
                {
                    n += 1;
                }
            }
            println!("cleared {n} counter(s)");
        }
    }
    Ok(())
}
