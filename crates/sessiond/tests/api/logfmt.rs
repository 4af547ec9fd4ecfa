//! Reading text log lines as a logfmt reader would: shared by the integration test of the
//! real binary's log (`net.rs`) and the formatter's unit tests (`src/logging.rs`, `#[path]`).

/// The field names of a text log line as a logfmt reader sees them: space-separated
/// `name=value` tokens after the target, values optionally in quotes with `\` escapes.
pub fn field_names(line: &str) -> Vec<String> {
    let rest = line.split_once(": ").map_or(line, |(_, r)| r);
    let (mut names, mut token, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in rest.chars().chain([' ']) {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
        } else if c == '"' {
            quoted = true;
        } else if c == ' ' {
            if let Some((name, _)) = token.split_once('=') {
                names.push(name.to_owned());
            }
            token.clear();
            continue;
        }
        token.push(c);
    }
    names
}
