//! NATS wildcard matching, as the server matches a subscription, a permission or a KV key
//! filter against a concrete subject: tokens split on `.`, `*` matches exactly one token, a
//! final `>` matches one or more
//! (<https://docs.nats.io/nats-concepts/subjects#wildcards>).

/// Whether `pattern` (which may hold `*` and a final `>`) matches the concrete `subject`.
pub fn pattern_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    let mut pattern_tokens = pattern.split('.').peekable();
    while let Some(p) = pattern_tokens.next() {
        if p == ">" && pattern_tokens.peek().is_none() {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(s) if p == "*" || p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_the_server_matches_them() {
        assert!(pattern_matches("a.b", "a.b"));
        assert!(!pattern_matches("a.b", "a.b.c"));
        assert!(!pattern_matches("a.b.c", "a.b"));
        assert!(pattern_matches("a.*", "a.b"));
        assert!(!pattern_matches("a.*", "a.b.c"));
        assert!(pattern_matches("a.>", "a.b.c"));
        assert!(!pattern_matches("a.>", "a"));
        assert!(pattern_matches(">", "a"));
        assert!(pattern_matches("*.egress.*", "_.egress.no_route"));
        assert!(!pattern_matches("acme.>", "acme-eu.egress.no_route"));
        assert!(pattern_matches("$JS.API.>", "$JS.API.STREAM.INFO.DLQ"));
        assert!(pattern_matches("$KV.*.>", "$KV.routes.acme"));
    }
}
