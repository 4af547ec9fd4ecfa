//! `sessiond user add|passwd|list|disable|enable|delete|2fa list|2fa reset`

use serde::Serialize;
use sessiond_core::{Group, NewUser, StoreError, User, Username};

use super::{read_new_password, runtime, usage, CliError, CliResult};
use crate::accounts;
use crate::config::Config;
use crate::server::now;
use crate::stores::{self, Stores};
use sessiond_axum::password::hash_blocking;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Create a user
    Add {
        name: String,
        /// Read the password from the first line of standard input
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, value_name = "E", default_value = "")]
        email: String,
        /// Display name
        #[arg(long = "name", value_name = "N", default_value = "")]
        display_name: String,
        /// Comma-separated groups
        #[arg(long, value_name = "a,b", default_value = "")]
        groups: String,
        /// Grant access to the admin pages
        #[arg(long)]
        admin: bool,
    },
    /// Set a user's password (ends all their sessions)
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable a user (ends all their sessions)
    Disable { name: String },
    /// Enable a disabled user
    Enable { name: String },
    /// Delete a user (ends all their sessions)
    Delete { name: String },
    /// Second factors: list them, or reset a user's
    #[command(name = "2fa", subcommand)]
    TwoFactor(TwoFactorCommand),
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum TwoFactorCommand {
    /// Each user's second factors
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove all of a user's second factors and end all their sessions (for a user who lost
    /// their device and their recovery codes)
    Reset { name: String },
}

#[derive(Serialize)]
struct FactorRow<'a> {
    username: &'a str,
    totp: bool,
    recovery_codes: u32,
    passkeys: u32,
}

fn username(name: &str) -> Result<Username, CliError> {
    Username::parse(name).map_err(|e| usage(format!("{name:?}: {e}")))
}

async fn find(stores: &Stores, name: &str) -> Result<User, CliError> {
    let u = username(name)?;
    stores
        .users
        .user_by_name(&u)
        .await?
        .map(|c| c.user)
        .ok_or_else(|| CliError::Runtime(anyhow::anyhow!("no user named {name:?}")))
}

#[derive(Serialize)]
struct UserRow<'a> {
    username: &'a str,
    name: &'a str,
    email: &'a str,
    groups: &'a [Group],
    admin: bool,
    disabled: bool,
    created_at: String,
}

pub(super) fn run(config: Config, cmd: Command) -> CliResult {
    let rt = runtime()?;
    let stores = rt.block_on(stores::open(&config.database, &config.session_store))?;
    match cmd {
        Command::Add {
            name,
            password_stdin,
            email,
            display_name,
            groups,
            admin,
        } => {
            let username = username(&name)?;
            let groups = Group::parse_list(&groups).map_err(|e| usage(e.to_string()))?;
            // Checked first so nobody types a password for nothing; the store's unique index
            // still decides if two `add`s race.
            if rt.block_on(stores.users.user_by_name(&username))?.is_some() {
                return Err(CliError::Runtime(anyhow::anyhow!(
                    "user {name:?} already exists"
                )));
            }
            let password = read_new_password(password_stdin)?;
            let phc = hash_blocking(&password)?;
            let new = NewUser {
                username,
                name: display_name,
                email,
                groups,
                admin,
                password_hash: phc,
                created_at: now(),
            };
            match rt.block_on(stores.users.create_user(&new)) {
                Ok(u) => {
                    tracing::info!(target: "sessiond::audit", event = "user_created", user = %u.username, admin = u.admin, by = "cli");
                    println!(
                        "created user {}{}",
                        u.username,
                        if u.admin { " (admin)" } else { "" }
                    )
                }
                Err(StoreError::Conflict) => {
                    return Err(CliError::Runtime(anyhow::anyhow!(
                        "user {name:?} already exists"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Passwd {
            name,
            password_stdin,
        } => {
            let user = rt.block_on(find(&stores, &name))?;
            let password = read_new_password(password_stdin)?;
            let phc = hash_blocking(&password)?;
            let n = rt.block_on(accounts::set_password(
                stores.users.as_ref(),
                stores.sessions.as_ref(),
                user.id,
                &phc,
            ))?;
            println!(
                "password of {} changed; {n} session(s) ended",
                user.username
            );
        }
        Command::List { json } => {
            let users = rt.block_on(stores.users.list_users())?;
            let rows: Vec<UserRow<'_>> = users
                .iter()
                .map(|u| UserRow {
                    username: u.username.as_str(),
                    name: &u.name,
                    email: &u.email,
                    groups: &u.groups,
                    admin: u.admin,
                    disabled: u.disabled,
                    created_at: u.created_at.to_rfc3339().as_str().to_owned(),
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<24} {:<20} {:<28} {:<20} {:<5} {:<8}",
                    "USERNAME", "NAME", "EMAIL", "GROUPS", "ADMIN", "DISABLED"
                );
                for r in &rows {
                    println!(
                        "{:<24} {:<20} {:<28} {:<20} {:<5} {:<8}",
                        r.username,
                        r.name,
                        r.email,
                        r.groups.join(","),
                        if r.admin { "yes" } else { "no" },
                        if r.disabled { "yes" } else { "no" }
                    );
                }
            }
        }
        Command::Disable { name } => {
            let user = rt.block_on(find(&stores, &name))?;
            let n = rt.block_on(accounts::disable(
                stores.users.as_ref(),
                stores.sessions.as_ref(),
                user.id,
            ))?;
            println!("disabled {}; {n} session(s) ended", user.username);
        }
        Command::Enable { name } => {
            let user = rt.block_on(find(&stores, &name))?;
            rt.block_on(sessiond_axum::auth::enable(stores.users.as_ref(), user.id))?;
            tracing::info!(target: "sessiond::audit", event = "user_enabled", user = %user.username, by = "cli");
            println!("enabled {}", user.username);
        }
        Command::TwoFactor(TwoFactorCommand::List { json }) => {
            let users = rt.block_on(stores.users.list_users())?;
            let mut summaries = Vec::with_capacity(users.len());
            for u in &users {
                summaries.push(rt.block_on(stores.factors.factor_summary(u.id))?);
            }
            let rows: Vec<FactorRow<'_>> = users
                .iter()
                .zip(&summaries)
                .map(|(u, f)| FactorRow {
                    username: u.username.as_str(),
                    totp: f.totp,
                    recovery_codes: f.recovery_codes,
                    passkeys: f.passkeys,
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<24} {:<5} {:<14} {:<8}",
                    "USERNAME", "TOTP", "RECOVERY_CODES", "PASSKEYS"
                );
                for r in &rows {
                    println!(
                        "{:<24} {:<5} {:<14} {:<8}",
                        r.username,
                        if r.totp { "yes" } else { "no" },
                        r.recovery_codes,
                        r.passkeys
                    );
                }
            }
        }
        Command::TwoFactor(TwoFactorCommand::Reset { name }) => {
            let user = rt.block_on(find(&stores, &name))?;
            // The library's order (`Auth::reset_second_factors`): sessions end first, so if
            // that fails the factors stay and the error is reported; again after, for a
            // session that began meanwhile. No encryption key is needed to remove secrets.
            let sessions = stores.sessions.as_ref();
            let mut ended =
                rt.block_on(sessiond_axum::auth::end_sessions(sessions, user.id, None))?;
            let removed = rt.block_on(stores.factors.factors_reset(user.id))?;
            ended += rt.block_on(sessiond_axum::auth::end_sessions(sessions, user.id, None))?;
            tracing::info!(target: "sessiond::audit", event = "second_factors_reset", user = %user.username, removed, by = "cli");
            if removed {
                println!(
                    "second factors of {} removed; {ended} session(s) ended",
                    user.username
                );
            } else {
                println!(
                    "{} had no second factors; {ended} session(s) ended",
                    user.username
                );
            }
        }
        Command::Delete { name } => {
            let user = rt.block_on(find(&stores, &name))?;
            let n = rt.block_on(accounts::delete(
                stores.users.as_ref(),
                stores.sessions.as_ref(),
                user.id,
            ))?;
            println!("deleted {}; {n} session(s) ended", user.username);
        }
    }
    Ok(())
}
