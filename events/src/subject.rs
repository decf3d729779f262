//! NATS subject names for events and commands.
//!
//! Events are published on `cairn.events.<namespace>.<repository>.<type>`,
//! where `<type>` is two tokens such as `repository.registered`. Names are
//! put into subjects through [`encode_token`]: a name made only of ASCII
//! letters, digits, `-` and `_` passes through unchanged (every DNS-1123
//! label does); anything else — dots, wildcards, spaces, non-ASCII, `~`, the
//! empty string — becomes `~` followed by the lowercase hex of its UTF-8
//! bytes. The encoding is reversible ([`decode_token`]) and never produces a
//! `.`, `*`, `>` or whitespace, so a name can never change a subject's shape.

/// Prefix of every event subject.
pub const EVENTS_PREFIX: &str = "cairn.events";
/// Wildcard covering every event subject; the JetStream stream's subject.
pub const EVENTS_WILDCARD: &str = "cairn.events.>";
/// Name of the JetStream stream holding every event.
pub const EVENTS_STREAM: &str = "CAIRN_EVENTS";
/// Name of the NATS micro service.
pub const SERVICE_NAME: &str = "cairn";
/// Endpoint subject of `log.read`.
pub const LOG_READ: &str = "cairn.v1.log.read";

const ENCODED_MARK: char = '~';

fn passes_through(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Encodes `name` as one valid subject token (see the module docs).
pub fn encode_token(name: &str) -> String {
    if passes_through(name) {
        return name.to_owned();
    }
    let mut out = String::with_capacity(1 + name.len() * 2);
    out.push(ENCODED_MARK);
    for b in name.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Reverses [`encode_token`]; `None` when `token` is not an encoding.
pub fn decode_token(token: &str) -> Option<String> {
    let Some(hex) = token.strip_prefix(ENCODED_MARK) else {
        return passes_through(token).then(|| token.to_owned());
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let name = String::from_utf8(bytes).ok()?;
    // Only the canonical form decodes, so each name has exactly one token.
    (!passes_through(&name)).then_some(name)
}

/// The subject an event of `event_type` (e.g. `repository.registered`) about
/// repository `namespace/repository` is published on.
pub fn event_subject(namespace: &str, repository: &str, event_type: &str) -> String {
    format!(
        "{EVENTS_PREFIX}.{}.{}.{event_type}",
        encode_token(namespace),
        encode_token(repository)
    )
}

/// True when `subject` is a valid NATS publish subject: non-empty tokens, no
/// wildcards, no whitespace.
pub fn is_valid_publish_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn dns_labels_pass_through() {
        assert_eq!(encode_token("team-a"), "team-a");
        assert_eq!(
            event_subject("team-a", "blueprints", "repository.registered"),
            "cairn.events.team-a.blueprints.repository.registered"
        );
    }

    #[test]
    fn other_names_are_encoded() {
        assert_eq!(encode_token("a.b"), "~612e62");
        assert_eq!(encode_token(""), "~");
        assert_eq!(encode_token("*"), "~2a");
        assert_eq!(encode_token("~x"), "~7e78");
        assert_eq!(decode_token("~612e62").as_deref(), Some("a.b"));
        assert_eq!(decode_token("team-a").as_deref(), Some("team-a"));
        // Non-canonical or broken encodings are rejected.
        assert_eq!(decode_token("~6162"), None, "\"ab\" must travel unencoded");
        assert_eq!(decode_token("~6"), None);
        assert_eq!(decode_token("~zz"), None);
        assert_eq!(decode_token("a.b"), None);
    }

    proptest! {
        #[test]
        fn encoding_round_trips_and_stays_one_token(name in any::<String>()) {
            let token = encode_token(&name);
            prop_assert_eq!(decode_token(&token), Some(name.clone()));
            let subject = event_subject(&name, &name, "repository.closed");
            prop_assert!(is_valid_publish_subject(&subject));
            prop_assert_eq!(subject.split('.').count(), 6);
        }
    }
}
