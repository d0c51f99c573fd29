//! Searching what processes logged for the secrets a test used. A secret is looked for as it is and in hex
//! (how tungstenite prints frame payloads), in every line each process wrote to stdout or stderr.

use crate::process::Process;

/// The longest part of a line a finding quotes: tungstenite's frame lines run to kilobytes.
const QUOTED: usize = 300;

/// A secret for a test, `s3cr3t-<what>-<32 hex digits>`: distinctive, so that a match in a log is never
/// an accident.
pub fn secret(what: &str) -> String {
    format!("s3cr3t-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// Every line of every process that carries one of `secrets` (named, for the message), as
/// "<process> logged the <secret's name> in line <n>: <the line around it>".
pub fn leaks(processes: &[(&str, &Process)], secrets: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for (process, output) in processes {
        let lines = output.output.lock().unwrap().clone();
        for (what, secret) in secrets {
            let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
            for (number, line) in lines.iter().enumerate() {
                let at = line.find(*secret).or_else(|| line.find(&hex));
                if let Some(at) = at {
                    found.push(format!(
                        "{process} logged the {what} in line {}: …{}…",
                        number + 1,
                        around(line, at)
                    ));
                }
            }
        }
    }
    found
}

/// At most [`QUOTED`] bytes of `line` around byte `at`, cut at character boundaries.
fn around(line: &str, at: usize) -> &str {
    let mut start = at.saturating_sub(QUOTED / 2);
    while !line.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (start + QUOTED).min(line.len());
    while !line.is_char_boundary(end) {
        end += 1;
    }
    &line[start..end]
}
