//! The short names a statement's [`Target`](crate::router::Target) carries (cluster,
//! database, shard label), kept inline when they fit: routing a statement, cloning its
//! target and dropping it allocate nothing for names of up to [`INLINE`] bytes, which
//! is every name a vschema usually has. A longer name is shared (`Arc<str>`).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The longest name kept inline (the whole value is 24 bytes, as a `String`).
pub const INLINE: usize = 22;

/// An immutable string, inline up to [`INLINE`] bytes.
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    /// `bytes[..len]` is the name; the rest is zero.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Shared(Arc<str>),
}

impl Name {
    /// `s` as a name.
    pub fn new(s: &str) -> Name {
        Name::concat(&[s])
    }

    /// The parts one after the other, as one name (no intermediate `String` when the
    /// result fits inline).
    pub fn concat(parts: &[&str]) -> Name {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > INLINE {
            return Name(Repr::Shared(Arc::from(parts.concat())));
        }
        let mut bytes = [0; INLINE];
        let mut at = 0;
        for p in parts {
            bytes[at..at + p.len()].copy_from_slice(p.as_bytes());
            at += p.len();
        }
        Name(Repr::Inline {
            len: total as u8,
            bytes,
        })
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                let b = bytes.get(..usize::from(*len)).unwrap_or_default();
                // SAFETY: an inline name's bytes are whole `&str`s copied one after the
                // other (`concat`), never cut inside a character: valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Repr::Shared(s) => s,
        }
    }
}

impl Default for Name {
    fn default() -> Name {
        Name::new("")
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        match (&self.0, &other.0) {
            // Names are inline exactly when they fit: equal names are both inline (and
            // their unused bytes are zero), or both shared.
            // Compared whole, a fixed size: a few word compares, no call to memcmp.
            (
                Repr::Inline { len, bytes },
                Repr::Inline {
                    len: other_len,
                    bytes: other_bytes,
                },
            ) => len == other_len && bytes == other_bytes,
            (Repr::Shared(a), Repr::Shared(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Name {}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == other.as_str()
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name::new(s)
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Name {
        Name::new(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        if s.len() <= INLINE {
            Name::new(&s)
        } else {
            Name(Repr::Shared(Arc::from(s)))
        }
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_inline_and_long_ones_shared() {
        let short = Name::new("app_shard_0");
        assert!(matches!(short.0, Repr::Inline { len: 11, .. }));
        assert_eq!(short.as_str(), "app_shard_0");
        let edge = Name::new(&"x".repeat(INLINE));
        assert!(matches!(edge.0, Repr::Inline { .. }));
        let long = Name::new(&"y".repeat(INLINE + 1));
        assert!(matches!(long.0, Repr::Shared(_)));
        assert_eq!(long.len(), INLINE + 1);
        assert_eq!(Name::from("y".repeat(INLINE + 1)), long);
    }

    #[test]
    fn concat_matches_the_joined_string_inline_or_not() {
        for parts in [
            &["app", "/", "-80"][..],
            &["ключ", "/", "шард"][..],
            &["keyspace_with_a_long_name", "/", "80-c0"][..],
            &[][..],
            &["", "", "x"][..],
        ] {
            let joined = parts.concat();
            let n = Name::concat(parts);
            assert_eq!(n.as_str(), joined);
            assert_eq!(n, Name::from(joined.clone()));
            assert_eq!(n, joined);
        }
    }

    #[test]
    fn equality_order_and_hash_follow_the_text() {
        use std::collections::HashSet;
        let a = Name::new("c1");
        let b = Name::from(String::from("c1"));
        assert_eq!(a, b);
        assert_ne!(a, Name::new("c10"));
        assert_ne!(a, Name::new("c"));
        assert!(Name::new("a") < Name::new("b"));
        let set: HashSet<Name> = [a.clone(), b].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert!(set.contains("c1"));
        assert_eq!(format!("{a} {a:?}"), "c1 \"c1\"");
        assert_eq!(Name::default().as_str(), "");
    }
}
