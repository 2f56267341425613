//! syncctl: a terminal operations console hosting a sync engine (Stripe products →
//! QuickBooks Items; paid invoices → Alegra → DIAN), with a built-in simulator of those
//! APIs.
//!
//! # Layout
//!
//! One package (the product card fixes the top level); its layers are kept by
//! `tests/layering.rs`, which reads every `crate::` path and fails on an edge its table
//! does not allow or on an import cycle. From the bottom up:
//!
//! | module | may use | what it is |
//! |---|---|---|
//! | `protocol` | nothing | what crosses the engine boundary, serializable: snapshot, events, commands, replies, queries, threshold specs, the `Link` a front-end drives an engine through |
//! | `telemetry` | protocol | series, anomalies, alerts, health scoring: computations over numbers |
//! | `resilience` | protocol, telemetry | breakers, retries, limiters, the autoscaler |
//! | `config` | protocol, resilience, telemetry | the typed config file and its checks |
//! | `store` | protocol, telemetry | SQLite: jobs, mappings, compliance records, audit |
//! | `connectors` | protocol, config, resilience, telemetry, store | Stripe, QuickBooks, Alegra clients |
//! | `compliance` | protocol, connectors | DIAN's rules: state machine, CUFE, contingency |
//! | `engine` | the above | the pipelines, the command path, the snapshot publisher; never the server, console or sandbox |
//! | `server` | protocol, engine, config, telemetry | HTTP over an engine's handle: webhooks, `/health`, `/metrics`, the control API |
//! | `console` | protocol | the terminal UI: draws snapshots, sends commands through a `Link` |
//! | `sandbox` | protocol, compliance, resilience | the simulated APIs, over real HTTP; never the engine |
//! | `app`, `status`, `bench`, `soak`, `main` | anything | wiring: the CLI, the demo, benchmarks, the soak |
//!
//! Why: a console in another process (attach) needs only `protocol`; the engine runs
//! as a service with or without any front-end; the sandbox stays a stand-in for the real
//! services, which know nothing of us.

pub mod app;
pub mod attach;
pub mod bench;
pub mod compliance;
pub mod config;
pub mod connectors;
pub mod console;
pub mod engine;
pub mod protocol;
pub mod resilience;
pub mod sandbox;
pub mod server;
pub mod soak;
pub mod status;
pub mod store;
pub mod telemetry;
