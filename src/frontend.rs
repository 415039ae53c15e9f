//! The client side: startup and authentication (`startup`), the per-client session state
//! machine (`session`), carrying out routing decisions (`checkout`), and the relay hot path
//! (`relay`), and LISTEN in transaction mode (`listen`).

mod checkout;
mod listen;
pub mod relay;
pub mod session;
pub mod startup;
