//! End-to-end measurement: post activities over REST, see them arrive elsewhere (a
//! webhook sink, a WebSocket), and measure the time in between.

pub mod api;
pub mod poster;
pub mod proc;
pub mod tracker;
