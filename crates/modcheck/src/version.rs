//! Terraform version constraints (`~> 6.25`, `>= 4.0, < 5.0`, ...), read far enough to tell
//! whether a module's `required_providers` pins the provider version its schema file is from.

use std::{cmp::Ordering, fmt};

/// A provider version, `major.minor.patch` (a missing part is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        Self { major, minor, patch }
    }

    /// Parses `6`, `6.25` or `6.25.0`; also returns how many parts were written.
    fn parse_parts(text: &str) -> Result<(Self, usize), String> {
        let text = text.trim().trim_start_matches('v');
        let parts: Vec<&str> = text.split('.').collect();
        if parts.is_empty() || parts.len() > 3 {
            return Err(format!("\"{text}\" is not a version"));
        }
        let mut numbers = [0u64; 3];
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            *slot = part.parse().map_err(|_| {
                format!("\"{text}\" is not a version this checker reads (digits and dots only)")
            })?;
        }
        Ok((Self::new(numbers[0], numbers[1], numbers[2]), parts.len()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_parts(text).map(|(version, _)| version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// One end of the range a constraint allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bound {
    version: Version,
    inclusive: bool,
}

/// The versions a constraint string allows: an interval, less any `!=` versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraint {
    lower: Option<Bound>,
    upper: Option<Bound>,
    excluded: Vec<Version>,
}

impl Constraint {
    /// Parses Terraform's constraint syntax: comma-separated `=`, `!=`, `>`, `>=`, `<`, `<=`,
    /// `~>` (or a bare version, meaning `=`). Pre-release versions are not supported.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut constraint = Self::default();
        for part in text.split(',') {
            let part = part.trim();
            let (op, rest) = ["~>", ">=", "<=", "!=", ">", "<", "="]
                .iter()
                .find_map(|op| part.strip_prefix(op).map(|rest| (*op, rest)))
                .unwrap_or(("=", part));
            let (version, written) = Version::parse_parts(rest)?;
            match op {
                "~>" => {
                    // The last written part may grow: ~> 6.25 is >= 6.25.0, < 7.0.0;
                    // ~> 6.25.1 is >= 6.25.1, < 6.26.0; ~> 6 is >= 6.0.0, < 7.0.0.
                    let upper = if written == 3 {
                        Version::new(version.major, version.minor + 1, 0)
                    } else {
                        Version::new(version.major + 1, 0, 0)
                    };
                    constraint.raise_lower(version, true);
                    constraint.cut_upper(upper, false);
                }
                ">=" => constraint.raise_lower(version, true),
                ">" => constraint.raise_lower(version, false),
                "<=" => constraint.cut_upper(version, true),
                "<" => constraint.cut_upper(version, false),
                "!=" => constraint.excluded.push(version),
                _ => {
                    constraint.raise_lower(version, true);
                    constraint.cut_upper(version, true);
                }
            }
        }
        Ok(constraint)
    }

    fn raise_lower(&mut self, version: Version, inclusive: bool) {
        let tighter = match self.lower {
            None => true,
            Some(old) => match version.cmp(&old.version) {
                Ordering::Greater => true,
                Ordering::Equal => !inclusive,
                Ordering::Less => false,
            },
        };
        if tighter {
            self.lower = Some(Bound { version, inclusive });
        }
    }

    fn cut_upper(&mut self, version: Version, inclusive: bool) {
        let tighter = match self.upper {
            None => true,
            Some(old) => match version.cmp(&old.version) {
                Ordering::Less => true,
                Ordering::Equal => !inclusive,
                Ordering::Greater => false,
            },
        };
        if tighter {
            self.upper = Some(Bound { version, inclusive });
        }
    }

    pub fn allows(&self, version: &Version) -> bool {
        let above = self.lower.is_none_or(|b| match version.cmp(&b.version) {
            Ordering::Greater => true,
            Ordering::Equal => b.inclusive,
            Ordering::Less => false,
        });
        let below = self.upper.is_none_or(|b| match version.cmp(&b.version) {
            Ordering::Less => true,
            Ordering::Equal => b.inclusive,
            Ordering::Greater => false,
        });
        above && below && !self.excluded.contains(version)
    }

    /// Why this constraint does not pin `schema` (the version a schema file comes from), or
    /// `None` when it does: it must allow that version, nothing older than its `major.minor`
    /// (arguments added since would be missing there), and nothing of a later major (which may
    /// rename or remove arguments).
    pub fn pin_problem(&self, schema: &Version) -> Option<String> {
        let floor = Version::new(schema.major, schema.minor, 0);
        let next_major = Version::new(schema.major + 1, 0, 0);
        let advice = format!("use \"~> {}.{}\"", schema.major, schema.minor);
        if !self.allows(schema) {
            return Some(format!(
                "does not allow {schema}, the version the schema is from; {advice}"
            ));
        }
        let allows_older = self.lower.is_none_or(|b| b.version < floor);
        if allows_older {
            let from =
                self.lower.map_or_else(|| "any version".to_owned(), |b| b.version.to_string());
            return Some(format!(
                "allows versions older than {floor} (from {from}), which the schema ({schema}) may not match; {advice}"
            ));
        }
        let allows_next = self.upper.is_none_or(|b| match b.version.cmp(&next_major) {
            Ordering::Greater => true,
            Ordering::Equal => b.inclusive,
            Ordering::Less => false,
        });
        if allows_next {
            return Some(format!(
                "allows {}.x and later, a major version the schema ({schema}) does not cover; {advice}",
                schema.major + 1
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn pessimistic_constraints_allow_what_terraform_allows() {
        let c = Constraint::parse("~> 6.25").unwrap();
        assert!(c.allows(&v("6.25.0")) && c.allows(&v("6.99.3")));
        assert!(!c.allows(&v("6.24.9")) && !c.allows(&v("7.0.0")));
        let c = Constraint::parse("~> 6.25.1").unwrap();
        assert!(c.allows(&v("6.25.9")) && !c.allows(&v("6.26.0")) && !c.allows(&v("6.25.0")));
        let c = Constraint::parse(">= 4.0, < 5.0, != 4.2.0").unwrap();
        assert!(c.allows(&v("4.1")) && !c.allows(&v("4.2.0")) && !c.allows(&v("5.0.0")));
        assert!(Constraint::parse("6.1.2").unwrap().allows(&v("6.1.2")));
        assert!(Constraint::parse("~> 6.0-beta").is_err());
    }

    #[test]
    fn a_pin_must_name_the_schema_version_and_stay_in_its_major() {
        let schema = v("6.25.0");
        assert_eq!(Constraint::parse("~> 6.25").unwrap().pin_problem(&schema), None);
        assert_eq!(Constraint::parse(">= 6.25.0, < 7.0.0").unwrap().pin_problem(&schema), None);
        let old = Constraint::parse("~> 5.80").unwrap().pin_problem(&schema).unwrap();
        assert!(old.starts_with("does not allow 6.25.0"), "{old}");
        let wide = Constraint::parse("~> 6.0").unwrap().pin_problem(&schema).unwrap();
        assert!(wide.contains("older than 6.25.0"), "{wide}");
        let open = Constraint::parse(">= 6.25").unwrap().pin_problem(&schema).unwrap();
        assert!(open.contains("allows 7.x"), "{open}");
        let to_seven = Constraint::parse(">= 6.25, <= 7.0.0").unwrap().pin_problem(&schema);
        assert!(to_seven.is_some());
    }
}
