//! # Strata: an open vendor-neutral archive for medical images
//!
//! PACS and modalities store into Strata over DICOM; every instance is written
//! content-addressed (blake3) to the hot disk, made durable and indexed in RocksDB before
//! it is acknowledged. See `docs/architecture.md` for the whole picture and
//! `../shared/DESIGN.md` for the promises this code keeps.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated, every key defaulted.
//! - [`dicom`]: the stored object format (Part-10 framing), header parsing, DIMSE codec.
//! - [`index`]: the metadata index trait and its RocksDB implementation.
//! - [`ingest`]: received bytes → durable, indexed object, with group commit.
//! - [`archive`]: opening an archive (exclusive lock, start-up recovery, read-only mode).
//! - [`scp`]: the DICOM association handler (C-ECHO, C-STORE).
//! - [`server`]: the listener, association cap and graceful shutdown.
//! - [`http`], [`metrics`]: `/metrics` and `/healthz`.
//! - [`ops`]: ls, show, export, verify, reindex, import.
//! - [`query`]: C-FIND matching over the index.
//!
//! Storage mechanics (the hot disk) live in the `strata-tiers` crate.

pub mod archive;
pub mod audit;
pub mod config;
pub mod dicom;
pub mod http;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod ops;
pub mod query;
pub mod scp;
pub mod scp_commit;
pub mod scp_find;
pub mod scp_move;
pub mod scu;
pub mod server;
pub mod tiering;
