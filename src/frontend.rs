//! The client side: startup and authentication (`startup`), the per-client session state
//! machine (`session`), carrying out routing decisions (`checkout`), and the relay hot path
//! (`relay`).

mod checkout;
pub mod relay;
pub mod session;
pub mod startup;
