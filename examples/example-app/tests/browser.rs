//! The example app in a real browser: headless Chromium, driven by fantoccini over
//! chromedriver, goes to the private page, is sent to the login form, logs in, reloads and logs
//! out, against the app's binary.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`). Without them the test prints `SKIP: chromium/chromedriver not installed`
//! and passes, unless `SESSIOND_REQUIRE_SERVICES=1` is set, in which case it fails.
//!
//! Run with `cargo test -p example-app --test browser`.

#[path = "../../common/app_flow.rs"]
mod app_flow;
#[path = "../../common/chromium.rs"]
mod chromium;

use app_flow::{App, PASSWORD, USER};
use chromium::{browser_installed, Browser, ChromeDriver};

const APP: app_flow::Spec = app_flow::Spec {
    bin: env!("CARGO_BIN_EXE_example-app"),
    db_file: "example-app.db",
};

#[tokio::test]
async fn login_visits_and_logout_in_headless_chromium() {
    if !browser_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("a scratch directory");
    let app = App::start(&APP, dir.path(), Some(PASSWORD)).await;
    let driver = ChromeDriver::start(dir.path()).await;
    let browser = Browser::start(&driver, &app.base, &dir.path().join("profile")).await;

    // Logged out, the private page sends the browser to the login form, which will bring it
    // back.
    browser.goto("/private").await;
    let at = browser.wait_for_path("/login").await;
    assert_eq!(at.query(), Some("next=%2Fprivate"), "{at}");

    browser.fill("input[name=username]", USER).await;
    browser.fill("input[name=password]", PASSWORD).await;
    browser
        .click(
            "//form[.//input[@name='password']]\
             //*[self::button[not(@type) or @type='submit'] or self::input[@type='submit']]",
        )
        .await;
    browser.wait_for_path("/private").await;
    let text = browser.text().await;
    assert!(
        text.contains(USER),
        "the private page names the user: {text}"
    );
    let first = app_flow::visits(&text).unwrap_or_else(|| panic!("no visits: {text}"));
    assert_eq!(first, 1, "the first visit after the login: {text}");

    // The browser keeps the session in a cookie that page scripts cannot read.
    let cookies = browser
        .client
        .get_all_cookies()
        .await
        .expect("the browser's cookies");
    assert!(
        cookies.iter().any(|c| c.http_only() == Some(true)),
        "no HttpOnly cookie after the login: {cookies:?}"
    );

    // The counter in the session's data grows with every request, reloads included.
    browser.client.refresh().await.expect("reload");
    browser.wait_for_path("/private").await;
    let text = browser.text().await;
    assert_eq!(
        app_flow::visits(&text),
        Some(first + 1),
        "after a reload: {text}"
    );

    // The logout button lands on the home page, and the session is gone.
    browser
        .click(
            "//form[contains(@action, 'logout')]\
             //*[self::button[not(@type) or @type='submit'] or self::input[@type='submit']]",
        )
        .await;
    browser.wait_for_path("/").await;
    browser.goto("/private").await;
    browser.wait_for_path("/login").await;

    browser.quit().await;
}
