//! Header rules: what wasmgate's header filter does to requests and responses.
//!
//! A [`HeaderPolicy`] is parsed once from the plugin configuration. For each request
//! it produces a [`RequestPlan`]: the edits to the request headers (strip spoofable
//! identity headers, then the matching rule's operations) and a [`ResponsePlan`]
//! whose templates are already filled in. Edits are values ([`HeaderEdit`]); the
//! filter crate turns them into host calls. Nothing here depends on proxy-wasm.

mod ops;
mod policy;
mod template;

pub use ops::{EditList, HeaderEdit, HeaderOps, ResolvedOps};
pub use policy::{Actions, HeaderPolicy, RequestPlan, ResponsePlan};
pub use template::{RequestView, Template, Variable};

#[cfg(test)]
mod tests;
