//! `sessiond hash-password [--password-stdin]`

use super::{read_new_password, CliResult};
use sessiond_axum::password::hash_blocking;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Read the password from the first line of standard input
    #[arg(long)]
    password_stdin: bool,
}

pub(super) fn run(args: Args) -> CliResult {
    let password = read_new_password(args.password_stdin)?;
    println!("{}", hash_blocking(&password)?);
    Ok(())
}
