//! `sessiond session list|revoke|purge`

use std::collections::HashMap;

use serde::Serialize;
use sessiond_core::{SessionId, UserId, Username};

use super::{runtime, usage, CliError, CliResult};
use crate::config::Config;

use super::progress::Progress;
use crate::server::{now, purge_expired_reporting};
use crate::stores;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// List sessions
    List {
        /// Only this user's sessions
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// End sessions: one by id, all of a user's, or all
    Revoke {
        /// Public session id (as `session list` shows)
        // Ids are URL-safe base64 and may begin with '-': never mistake one for a flag.
        #[arg(
            allow_hyphen_values = true,
            conflicts_with_all = ["user", "all"],
            required_unless_present_any = ["user", "all"]
        )]
        id: Option<String>,
        #[arg(long, value_name = "NAME", conflicts_with = "all")]
        user: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Delete expired sessions now
    Purge,
}

#[derive(Serialize)]
struct SessionRow {
    id: String,
    user: String,
    created_at: String,
    last_seen_at: String,
    expires_at: String,
    remember: bool,
    ip: Option<String>,
    user_agent: Option<String>,
}

pub(super) fn run(config: Config, cmd: Command) -> CliResult {
    let rt = runtime()?;
    let stores = rt.block_on(stores::open(&config.database, &config.session_store))?;
    let user_id = |name: &str| -> Result<UserId, CliError> {
        let u = Username::parse(name).map_err(|e| usage(format!("{name:?}: {e}")))?;
        rt.block_on(stores.users.user_by_name(&u))?
            .map(|c| c.user.id)
            .ok_or_else(|| CliError::Runtime(anyhow::anyhow!("no user named {name:?}")))
    };
    match cmd {
        Command::List { user, json } => {
            let sessions = match &user {
                Some(name) => rt.block_on(stores.sessions.list_for_user(user_id(name)?))?,
                None => rt.block_on(stores.sessions.list_all())?,
            };
            let names: HashMap<UserId, String> = rt
                .block_on(stores.users.list_users())?
                .into_iter()
                .map(|u| (u.id, u.username.as_str().to_owned()))
                .collect();
            let rows: Vec<SessionRow> = sessions
                .iter()
                .map(|s| SessionRow {
                    id: s.id.to_string(),
                    user: names
                        .get(&s.user_id)
                        .cloned()
                        .unwrap_or_else(|| format!("#{}", s.user_id.0)),
                    created_at: s.created_at.to_rfc3339().as_str().to_owned(),
                    last_seen_at: s.last_seen_at.to_rfc3339().as_str().to_owned(),
                    expires_at: s.expires_at.to_rfc3339().as_str().to_owned(),
                    remember: s.remember,
                    ip: s.ip.clone(),
                    user_agent: s.user_agent.clone(),
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<22} {:<16} {:<20} {:<20} {:<20} {:<8} IP",
                    "ID", "USER", "CREATED", "LAST SEEN", "EXPIRES", "REMEMBER"
                );
                for r in &rows {
                    println!(
                        "{:<22} {:<16} {:<20} {:<20} {:<20} {:<8} {}",
                        r.id,
                        r.user,
                        r.created_at,
                        r.last_seen_at,
                        r.expires_at,
                        if r.remember { "yes" } else { "no" },
                        r.ip.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        Command::Revoke { id, user, all } => {
            let n = if all {
                rt.block_on(stores.sessions.delete_all())?
            } else if let Some(name) = user {
                rt.block_on(stores.sessions.delete_for_user(user_id(&name)?, None))?
            } else {
                let raw = id.unwrap_or_default();
                let id = SessionId::parse(&raw)
                    .ok_or_else(|| usage(format!("{raw:?} is not a session id")))?;
                if !rt.block_on(stores.sessions.delete_by_id(&id, None))? {
                    return Err(CliError::Runtime(anyhow::anyhow!(
                        "no session with id {raw}"
                    )));
                }
                1
            };
            println!("revoked {n} session(s)");
        }
        Command::Purge => {
            let mut progress = Progress::start("purge", "expired session(s) removed");
            let purged = rt.block_on(purge_expired_reporting(
                stores.sessions.as_ref(),
                now(),
                |n| progress.add(n),
            ));
            let summary = progress.finish();
            let n = purged?;
            println!("removed {n} expired session(s) {}", summary.timing());
        }
    }
    Ok(())
}
