//! Real-time edge: the Phoenix Channels WebSocket endpoint (DESIGN.md §3 "Real time",
//! protocols.md §1).
//!
//! Stage 1 of the flow, beside `http`. [`frame`] is the wire format.

pub mod frame;
