//! IR → IR passes: reverse-mode autodiff, and simplification (constant folding, algebraic
//! identities, CSE, DCE). Each pass takes a verified function and returns a verified one.

pub mod autodiff;
pub mod simplify;
mod vjp;

pub use autodiff::differentiate;
pub use simplify::simplify;
