//! The client side: startup and authentication (`startup`), the per-client session state
//! machine (`session`), and the relay hot path (`relay`).

pub mod relay;
pub mod session;
pub mod startup;
