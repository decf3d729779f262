//! Glob patterns over full keys, with Redis's `SCAN MATCH` meaning: `*`
//! (any run, `:` included), `?` (one character), `[abc]`, `[^abc]`,
//! `[a-z]`, and `\x` for a literal `x` (so `user\*` matches only the key
//! `user*`).
//!
//! Hand-written rather than taken from a crate: the crates at hand (`glob`,
//! `globset`) give path semantics (`[!…]` negation, no backslash escape in
//! `glob`, separators in `globset`), not Redis's, and the matcher is the
//! contract clients rely on. Matching is iterative with one backtrack point
//! (the last `*`), so it costs at most `pattern × key` steps: no
//! exponential case for patterns like `a*a*a*a*b`.

/// A pattern's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`.
    Star,
    /// `?`.
    Any,
    /// A literal character.
    Char(char),
    /// `[…]`: ranges (a single character is `(c, c)`), negated with `^`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern` (any text is a valid pattern, as in Redis: an
    /// unclosed `[` ends the class at the end of the pattern, a trailing
    /// `\` is literal).
    pub fn new(pattern: &str) -> Self {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::with_capacity(chars.len());
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::Any),
                '\\' if i + 1 < chars.len() => {
                    i += 1;
                    tokens.push(Token::Char(chars[i]));
                }
                '[' => {
                    i += 1;
                    let negated = chars.get(i) == Some(&'^');
                    if negated {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    while i < chars.len() && chars[i] != ']' {
                        let mut c = chars[i];
                        if c == '\\' && i + 1 < chars.len() {
                            i += 1;
                            c = chars[i];
                        }
                        if chars.get(i + 1) == Some(&'-')
                            && i + 2 < chars.len()
                            && chars[i + 2] != ']'
                        {
                            let (a, b) = (c, chars[i + 2]);
                            ranges.push((a.min(b), a.max(b)));
                            i += 3;
                        } else {
                            ranges.push((c, c));
                            i += 1;
                        }
                    }
                    tokens.push(Token::Class { negated, ranges });
                }
                c => tokens.push(Token::Char(c)),
            }
            i += 1;
        }
        Self { tokens }
    }

    /// The literal text every match starts with (for prefix scans).
    pub fn literal_prefix(&self) -> String {
        self.tokens
            .iter()
            .map_while(|t| match t {
                Token::Char(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let (mut p, mut t) = (0usize, 0usize);
        // The last `*` seen and the text position it is tried from.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            let step = match self.tokens.get(p) {
                Some(Token::Star) => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(Token::Any) => true,
                Some(Token::Char(c)) => *c == text[t],
                Some(Token::Class { negated, ranges }) => {
                    let inside = ranges.iter().any(|(a, b)| (*a..=*b).contains(&text[t]));
                    inside != *negated
                }
                None => false,
            };
            if step {
                p += 1;
                t += 1;
            } else if let Some((sp, st)) = star {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::Star)
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn redis_scan_match_semantics() {
        let m = |p: &str, t: &str| Glob::new(p).matches(t);
        assert!(m("user:*", "user:123:profile"));
        assert!(!m("user:*", "users:1"));
        assert!(m("h?llo", "hello") && !m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-c]llo", "hbllo") && !m("h[a-c]llo", "hdllo"));
        assert!(m("a\\*b", "a*b") && !m("a\\*b", "axb"));
        assert!(m("*", "") && m("**", "x"));
        assert!(m("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaab"));
        assert!(!m("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaa"));
        assert_eq!(Glob::new("user:1*").literal_prefix(), "user:1");
        assert_eq!(Glob::new("a\\*b*").literal_prefix(), "a*b");
    }
}
