//! [`Digest`]: the sha256 digest that names a blob. A leaf module: the
//! blob store and the errors both name digests, and neither imports the
//! other for it.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `content`.
    pub fn of(content: &[u8]) -> Self {
        Digest(Sha256::digest(content).into())
    }

    /// Parses `sha256:<64 hex>` or bare hex (either case).
    ///
    /// Every event naming a package resource is parsed here twice (the
    /// applier's blob check, then the fold), so the hex is decoded by
    /// `const-hex` (vectorised; the `hex` crate decoded a byte at a time,
    /// a seventh of the applier's thread in a catch-up of one-event
    /// commits). `const-hex` also takes a `0x` prefix: the length check
    /// first keeps the accepted forms exactly the 64 hex digits they were.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        const_hex::decode_to_slice(hex, &mut out).ok()?;
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        let hex = const_hex::encode_to_str(self.0, &mut buf).map_err(|_| fmt::Error)?;
        write!(f, "sha256:{hex}")
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::Digest;

    #[test]
    fn parses_64_hex_digits_of_either_case_with_or_without_the_prefix_only() {
        let lower = "00ff".repeat(16);
        let want = Digest(std::array::from_fn(|i| if i % 2 == 0 { 0 } else { 0xff }));
        assert_eq!(Digest::parse(&lower), Some(want));
        assert_eq!(Digest::parse(&format!("sha256:{lower}")), Some(want));
        assert_eq!(Digest::parse(&lower.to_uppercase()), Some(want));
        assert_eq!(want.to_string(), format!("sha256:{lower}"));
        for bad in [
            format!("0x{lower}"),
            format!("sha256:0x{}", &lower[2..]),
            lower[..62].to_owned(),
            format!("{lower}00"),
            format!("{}g", &lower[..63]),
            String::new(),
        ] {
            assert_eq!(Digest::parse(&bad), None, "{bad:?}");
        }
    }
}
