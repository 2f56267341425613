//! syncctl: a terminal operations console hosting a Stripe → QuickBooks (and, later,
//! Alegra/DIAN) sync engine in-process, with a built-in simulator of those APIs.
//!
//! Layers (see DESIGN.md): `engine` knows nothing of terminals; `ui` only reads
//! snapshots and sends commands; `store` is the only place that persists; `connectors`
//! are plain API clients; `sandbox` simulates the APIs over real HTTP.

pub mod app;
pub mod bench;
pub mod compliance;
pub mod config;
pub mod connectors;
pub mod engine;
pub mod protocol;
pub mod resilience;
pub mod sandbox;
pub mod server;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod ui;
