//! The five header operations and the edits they turn into.

use crate::template::{RequestView, Template};
use wasmgate_config::HeaderName;

/// One change to a header map, in the order the filter must apply them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Remove(HeaderName),
    /// Replace every value of the header with this one.
    Set(HeaderName, String),
    /// Add one more value, keeping the existing ones.
    Append(HeaderName, String),
}

/// The operations of one section (`request` or `response`) of a rule.
///
/// They run in a fixed order, whatever order the JSON lists them in:
/// `remove`, `rename`, `set`, `append`, `if_absent`; each sees the effect of the
/// previous ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub(crate) remove: Vec<HeaderName>,
    pub(crate) rename: Vec<(HeaderName, HeaderName)>,
    pub(crate) set: Vec<(HeaderName, Template)>,
    pub(crate) append: Vec<(HeaderName, Template)>,
    pub(crate) if_absent: Vec<(HeaderName, Template)>,
}

/// [`HeaderOps`] whose templates have been filled in from the request.
///
/// Response operations are resolved when the request arrives (templates read the
/// request) and applied when the response arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedOps {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, String)>,
    append: Vec<(HeaderName, String)>,
    if_absent: Vec<(HeaderName, String)>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.append.is_empty()
            && self.if_absent.is_empty()
    }

    /// Fills in every template; an operation whose template has no value for this
    /// request is dropped.
    pub fn resolve(&self, view: &dyn RequestView) -> ResolvedOps {
        let fill = |list: &[(HeaderName, Template)]| -> Vec<(HeaderName, String)> {
            list.iter()
                .filter_map(|(name, template)| Some((name.clone(), template.render(view)?)))
                .collect()
        };
        ResolvedOps {
            remove: self.remove.clone(),
            rename: self.rename.clone(),
            set: fill(&self.set),
            append: fill(&self.append),
            if_absent: fill(&self.if_absent),
        }
    }
}

impl ResolvedOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.append.is_empty()
            && self.if_absent.is_empty()
    }

    /// Appends to `edits` what these operations do to a header map whose values
    /// `current` reports (before any of `edits` is applied).
    pub fn write_edits(&self, edits: &mut EditList, current: &dyn Fn(&str) -> Option<String>) {
        for name in &self.remove {
            edits.push(HeaderEdit::Remove(name.clone()));
        }
        for (from, to) in &self.rename {
            if let Some(value) = edits.lookup(from, current) {
                edits.push(HeaderEdit::Remove(from.clone()));
                edits.push(HeaderEdit::Set(to.clone(), value));
            }
        }
        for (name, value) in &self.set {
            edits.push(HeaderEdit::Set(name.clone(), value.clone()));
        }
        for (name, value) in &self.append {
            edits.push(HeaderEdit::Append(name.clone(), value.clone()));
        }
        for (name, value) in &self.if_absent {
            if edits.lookup(name, current).is_none() {
                edits.push(HeaderEdit::Set(name.clone(), value.clone()));
            }
        }
    }
}

/// Edits in application order, able to answer "what would this header hold now?".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EditList {
    edits: Vec<HeaderEdit>,
}

impl EditList {
    pub fn push(&mut self, edit: HeaderEdit) {
        self.edits.push(edit);
    }

    /// The first value of `name` after the edits so far, falling back to `current`.
    pub fn lookup(
        &self,
        name: &HeaderName,
        current: &dyn Fn(&str) -> Option<String>,
    ) -> Option<String> {
        Self::lookup_in(&self.edits, name, current)
    }

    fn lookup_in(
        edits: &[HeaderEdit],
        name: &HeaderName,
        current: &dyn Fn(&str) -> Option<String>,
    ) -> Option<String> {
        for (index, edit) in edits.iter().enumerate().rev() {
            match edit {
                HeaderEdit::Remove(n) if n == name => return None,
                HeaderEdit::Set(n, value) if n == name => return Some(value.clone()),
                // An appended value is the first one only if the header was absent.
                HeaderEdit::Append(n, value) if n == name => {
                    return Self::lookup_in(&edits[..index], name, current)
                        .or_else(|| Some(value.clone()))
                }
                _ => {}
            }
        }
        current(name.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &HeaderEdit> {
        self.edits.iter()
    }
}

impl IntoIterator for EditList {
    type Item = HeaderEdit;
    type IntoIter = std::vec::IntoIter<HeaderEdit>;
    fn into_iter(self) -> Self::IntoIter {
        self.edits.into_iter()
    }
}
