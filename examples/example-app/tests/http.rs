//! The example app's contract over HTTP, against the real binary (the flow itself:
//! `examples/common/app_flow.rs`, shared with `own-users`).
//!
//! Run with `cargo test -p example-app --test http`.

#[macro_use]
#[path = "../../common/app_flow.rs"]
mod app_flow;

const APP: app_flow::Spec = app_flow::Spec {
    bin: env!("CARGO_BIN_EXE_example-app"),
    db_file: "example-app.db",
};

contract_tests!(APP);
