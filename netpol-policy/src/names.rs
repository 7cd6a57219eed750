//! DNS names as CiliumNetworkPolicy matches them (`toFQDNs` and DNS rules: `matchName`,
//! `matchPattern`), one module for the compiler, the DNS proxy and the reference evaluator.
//!
//! Semantics, as Cilium documents them: case-insensitive; a trailing dot is optional (both
//! sides are compared without it); in a pattern `*` matches any run of characters *within
//! one label* (never a dot), so `*.songlaa.com` matches `www.songlaa.com` but neither
//! `songlaa.com` nor `a.b.songlaa.com`; a pattern that is a lone `*` matches every name.
//! Names are checked as DNS names on the way in: at most 253 characters, labels of 1 to 63
//! characters of letters, digits, `-` and `_`.

use std::fmt;

/// A name or pattern that is not one, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// The longest DNS name in presentation form, without its trailing dot.
pub const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// A DNS name in canonical form: lower case, no trailing dot, validated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Name, NameError> {
        let canonical = canonical(s);
        check(&canonical, false)?;
        Ok(Name(canonical))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn labels(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

/// As its text; read back through [`Name::parse`], so a saved name is checked again.
impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        let text = String::deserialize(d)?;
        Name::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a `matchName` or `matchPattern` selects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NameMatch {
    /// `matchName`: exactly this name.
    Exact(Name),
    /// `matchPattern`: one glob per label, `*` within the label.
    Pattern(Vec<String>),
    /// `matchPattern: "*"`: every name.
    All,
}

impl NameMatch {
    /// A `matchName`.
    pub fn name(s: &str) -> Result<NameMatch, NameError> {
        Name::parse(s).map(NameMatch::Exact)
    }

    /// A `matchPattern` (a pattern without `*` is a name).
    pub fn pattern(s: &str) -> Result<NameMatch, NameError> {
        let canonical = canonical(s);
        if canonical == "*" {
            return Ok(NameMatch::All);
        }
        check(&canonical, true)?;
        if !canonical.contains('*') {
            return Ok(NameMatch::Exact(Name(canonical)));
        }
        Ok(NameMatch::Pattern(canonical.split('.').map(String::from).collect()))
    }

    pub fn matches(&self, name: &Name) -> bool {
        match self {
            NameMatch::All => true,
            NameMatch::Exact(n) => n == name,
            NameMatch::Pattern(globs) => {
                name.labels().count() == globs.len()
                    && globs.iter().zip(name.labels()).all(|(g, l)| glob(g.as_bytes(), l.as_bytes()))
            }
        }
    }
}

impl fmt::Display for NameMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameMatch::All => f.write_str("*"),
            NameMatch::Exact(n) => write!(f, "{n}"),
            NameMatch::Pattern(globs) => f.write_str(&globs.join(".")),
        }
    }
}

fn canonical(s: &str) -> String {
    s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase()
}

fn check(s: &str, star: bool) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError("an empty name".into()));
    }
    if s.len() > MAX_NAME {
        return Err(NameError(format!("{} characters, more than {MAX_NAME}", s.len())));
    }
    for label in s.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return Err(NameError(format!("{s:?}: a label must have 1 to {MAX_LABEL} characters")));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (star && c == '*');
        if let Some(c) = label.chars().find(|c| !allowed(*c)) {
            return Err(NameError(format!("{s:?}: {c:?} is not allowed in a DNS name")));
        }
    }
    Ok(())
}

/// Whether `label` matches `pattern`, where `*` matches any run of characters: the
/// greedy matcher that backtracks only to the last star, O(len(pattern) × len(label)) (a
/// hostile pattern such as `*a*a*a*…` costs no more).
fn glob(pattern: &[u8], label: &[u8]) -> bool {
    let (mut p, mut l) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while l < label.len() {
        if pattern.get(p) == Some(&b'*') {
            last_star = Some((p, l));
            p += 1;
        } else if pattern.get(p) == Some(&label[l]) {
            p += 1;
            l += 1;
        } else if let Some((sp, sl)) = last_star {
            // The last star takes one more character.
            last_star = Some((sp, sl + 1));
            p = sp + 1;
            l = sl + 1;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}
