//! SQL text, read without I/O: PostgreSQL's lexical structure ([`lexer`]), what a statement
//! may do for routing ([`classify`]), and which statements set or undo session state
//! ([`session_state`]).
//!
//! Invariants: nothing here allocates on the fast path (the lexer and the keyword scans);
//! `sqlparser` is reached only by [`classify`] for statements the keyword scan cannot
//! decide, and its results are cached. The lexer is the bottom of the module: the other
//! two import it, it imports neither.

pub mod classify;
mod lexer;
pub mod listen;
pub mod session_state;

pub use lexer::Hint;
