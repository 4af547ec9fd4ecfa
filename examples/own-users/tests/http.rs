//! The own-users example's contract over HTTP, against the real binary: the same flow as
//! `example-app` (`examples/common/app_flow.rs`), over the app's own users table.
//!
//! Run with `cargo test -p own-users --test http`.

#[macro_use]
#[path = "../../common/app_flow.rs"]
mod app_flow;

const APP: app_flow::Spec = app_flow::Spec {
    bin: env!("CARGO_BIN_EXE_own-users"),
    db_file: "own-users.db",
};

contract_tests!(APP);
