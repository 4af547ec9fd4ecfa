//! The most lenient reading of a request path that back ends are known to make, all at once:
//! decoded until nothing changes (apps that decode twice), `\` and Unicode look-alikes read as
//! `/` and `.`, `;params` dropped (Tomcat, Jetty), trailing dots and white space dropped from
//! segments (Windows), case folded (case-insensitive file systems), empty and dot segments
//! resolved (nginx, Python's `http.server`, every URL library). A path that this reading
//! and sessiond read differently is where an access rule could be bypassed.
//!
//! Shared by the differential test (an upstream that serves by this reading) and the
//! `forwarded_headers` fuzz target (`#[path]`), so both hold sessiond to the same back end.

/// `raw` (a request target: path and maybe a query) as the most lenient back end reads it.
pub fn lenient_path(raw: &str) -> String {
    let mut path = raw.split('?').next().unwrap_or("").to_owned();
    for _ in 0..4 {
        let once = percent_decode(&path);
        if once == path {
            break;
        }
        path = once;
    }
    // A `?` or `#` that only appeared after decoding ends the path for an app that decodes
    // twice.
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path: String = path
        .chars()
        .map(|c| match c {
            '\\' | '\u{2044}' | '\u{2215}' | '\u{FF0F}' | '\u{2216}' | '\u{29F5}' | '\u{29F9}'
            | '\u{FE68}' | '\u{FF3C}' => '/',
            '\u{2024}' | '\u{FE52}' | '\u{FF0E}' => '.',
            '\u{037E}' | '\u{FE54}' | '\u{FF1B}' => ';',
            c => c.to_ascii_lowercase(),
        })
        .collect::<String>()
        .replace('\u{2025}', "..")
        .replace('\u{2026}', "...");
    let mut resolved: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        match segment.trim_end_matches(|c: char| c.is_whitespace() || c == '\0') {
            ".." => {
                resolved.pop();
            }
            s => {
                // Windows drops trailing dots: `.` and `...` read as "here".
                let s = s.trim_end_matches('.');
                if !s.is_empty() {
                    resolved.push(s);
                }
            }
        }
    }
    // A trailing slash names the same resource (a directory) and stays.
    if path.ends_with('/') && !resolved.is_empty() {
        resolved.push("");
    }
    format!("/{}", resolved.join("/"))
}

/// `%XX` decoded where well-formed (anything else kept as it is); the overlong UTF-8 forms
/// of `.`, `/` and `\` read as those (old IIS); other bytes that are not UTF-8 become U+FFFD.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    let mut read = Vec::with_capacity(out.len());
    let mut i = 0;
    while i < out.len() {
        match (out[i], out.get(i + 1)) {
            (0xC0, Some(0xAE)) => read.push(b'.'),
            (0xC0, Some(0xAF)) => read.push(b'/'),
            (0xC1, Some(0x9C)) => read.push(b'\\'),
            (b, _) => {
                read.push(b);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    String::from_utf8_lossy(&read).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}
