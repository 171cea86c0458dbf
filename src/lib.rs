//! Spillway: a self-hosted delivery daemon compatible with Amazon Data Firehose.
//!
//! Data path, one module per box: [`ingest`] (Direct PUT endpoint) → [`log`] (durable shard log) →
//! [`pipeline`] (one consumer per delivery stream and shard) → [`process`] (decompression,
//! deaggregation) → [`transform`] (WebAssembly plugins) → [`partition`] (dynamic partitioning) → [`buffer`] (object being filled,
//! [`compression`] streamed) → [`sink`] (object store), named by [`prefix`]. [`config`] reads the YAML
//! file; [`daemon`] wires it all together.

pub mod buffer;
pub mod compression;
pub mod config;
pub mod daemon;
pub mod error_output;
pub mod format;
pub mod fs;
pub mod ingest;
pub mod log;
pub mod partition;
pub mod pipeline;
pub mod prefix;
pub mod process;
pub mod sink;
pub mod time;
pub mod transform;
