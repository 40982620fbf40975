//! Inputs by parameter name: what the generated typed structs convert to, what the CLI builds
//! from files, and what executors consume.

use std::collections::BTreeMap;

use crate::tensor::{Head, TensorView};

/// An input value: a head or a tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum InputValue<'a> {
    /// An lm head.
    Head(Head<'a>),
    /// Any other input.
    Tensor(TensorView<'a>),
}

/// Inputs by parameter name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InputSet<'a> {
    map: BTreeMap<String, InputValue<'a>>,
}

impl<'a> InputSet<'a> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a head.
    pub fn head(mut self, name: &str, head: Head<'a>) -> Self {
        self.map.insert(name.into(), InputValue::Head(head));
        self
    }

    /// Adds a tensor.
    pub fn tensor(mut self, name: &str, t: TensorView<'a>) -> Self {
        self.map.insert(name.into(), InputValue::Tensor(t));
        self
    }

    /// Inserts a value.
    pub fn insert(&mut self, name: &str, v: InputValue<'a>) {
        self.map.insert(name.into(), v);
    }

    /// The value called `name`.
    pub fn get(&self, name: &str) -> Option<&InputValue<'a>> {
        self.map.get(name)
    }

    /// Whether `name` is given.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Names given.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}
