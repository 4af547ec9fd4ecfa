//! `GET /api/openapi.json` (issue 19): the description generated from the code, served as
//! committed in docs/reference/openapi.json, cacheable. schemathesis checks the server
//! against it in CI (.ci/schemathesis.sh).

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn the_description_is_served_as_committed_and_cacheable() {
    let app = spawn_app().await;
    let res = app
        .bare_client()
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["cache-control"], "public, max-age=3600");
    let body = res.text().await.unwrap();
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/reference/openapi.json"),
    )
    .unwrap();
    assert!(
        body == committed,
        "docs/reference/openapi.json is stale: run `SESSIOND_BLESS=1 cargo test -p sessiond --lib -- openapi`"
    );
    let spec: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    assert!(spec["paths"]["/api/login"]["post"].is_object());

    // HEAD like every GET route, without a body.
    let res = app
        .bare_client()
        .head(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.unwrap().is_empty());
}
