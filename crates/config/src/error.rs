use std::fmt;

/// A configuration that cannot be used, with the path of the field that is wrong.
///
/// Displayed as `field: problem` (or just `problem` for the document as a whole), which
/// is the single log line a filter writes when it refuses its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: String,
    problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The JSON path of the offending field, e.g. `rules[0].request.set.x-a`.
    pub fn field(&self) -> &str {
        &self.field
    }

    pub fn problem(&self) -> &str {
        &self.problem
    }

    /// Places this error inside a parent field: `within("rules[2]")` turns
    /// `match.prefix` into `rules[2].match.prefix`.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if parent.is_empty() || self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.problem)
        } else {
            write!(f, "{}: {}", self.field, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_builds_a_dotted_path() {
        let err = ConfigError::new("prefix", "must start with /")
            .within("match")
            .within("rules[3]");
        assert_eq!(err.field(), "rules[3].match.prefix");
        assert_eq!(err.to_string(), "rules[3].match.prefix: must start with /");
    }

    #[test]
    fn within_keeps_index_suffixes_attached() {
        let err = ConfigError::new("[2]", "bad").within("audiences");
        assert_eq!(err.field(), "audiences[2]");
    }

    #[test]
    fn document_level_error_has_no_field() {
        assert_eq!(ConfigError::new("", "empty").to_string(), "empty");
    }
}
