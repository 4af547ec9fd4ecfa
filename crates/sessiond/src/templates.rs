//! Server-rendered HTML (minijinja, auto-escaped because every template name ends in `.html`).
//! The pages work without JavaScript; none is served.

use std::sync::LazyLock;

use minijinja::Environment;
use serde::Serialize;

/// The built-in templates, parsed once.
pub(crate) fn templates() -> &'static Templates {
    static T: LazyLock<Templates> = LazyLock::new(Templates::new);
    &T
}

#[derive(Debug)]
pub(crate) struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub(crate) fn new() -> Self {
        let mut env = Environment::new();
        for (name, src) in [
            ("base.html", include_str!("templates/base.html")),
            ("login.html", include_str!("templates/login.html")),
            ("login_2fa.html", include_str!("templates/login_2fa.html")),
            ("account.html", include_str!("templates/account.html")),
            ("error.html", include_str!("templates/error.html")),
            ("admin.html", include_str!("templates/admin.html")),
            (
                "recovery_codes.html",
                include_str!("templates/recovery_codes.html"),
            ),
        ] {
            env.add_template(name, src)
                .expect("built-in templates parse");
        }
        Self { env }
    }

    /// Renders a built-in template. The templates are part of the binary and tested, so a
    /// failure here is a bug; it is logged and the caller answers `500`.
    pub(crate) fn render(
        &self,
        name: &str,
        ctx: impl Serialize,
    ) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }
}

pub(crate) const STYLE_CSS: &str = include_str!("templates/style.css");
/// The passkey ceremonies of the pages (`/static/passkeys.js`).
pub(crate) const PASSKEYS_JS: &str = include_str!("templates/passkeys.js");
