//! # Strata: an open vendor-neutral archive for medical images
//!
//! PACS and modalities store into Strata over DICOM; every instance is written
//! content-addressed (blake3) to the hot disk, made durable and indexed before it is
//! acknowledged, aged to cold study packs, and given back over DICOM. See
//! `docs/architecture.md` for the whole picture and `../shared/DESIGN.md` for the
//! promises this code keeps.
//!
//! # Layout
//! The crate is layered; data and calls flow one way, top to bottom, and no module
//! imports one that imports it back (`python3 ../shared/tools/import_cycles.py src`
//! finds none):
//!
//! ```text
//! adapters     dimse/ (DICOM upper layer, SCP and SCU)   http/ (metrics, health, admin API)
//!              the `strata` binary's cli/ (clap, one module per command group)
//!              server (composes the adapters and the workers for `strata serve`)
//!                 │ call only ↓
//! application  archive/: store, find, retrieve, catalog, export, integrity (verify,
//!              repair, commitment), governance (delete, hold, retention), tier moves;
//!              each takes a Principal and audits itself
//!                 │
//! core         ingest (durable group commit), index (small traits; RocksDB, memory),
//!              tiering (packs, mover, reader, worker, scrubber), storage (the archive
//!              directory: lock, recovery, reindex), audit (hash-chained log), query
//!              (C-FIND matching), config, metrics
//!                 │
//! formats and  dicom/ (Part-10, framing walker, header, DA values, DIMSE statuses,
//! mechanics    storage classes); the `strata-tiers` crate (hot disk, object stores)
//! ```
//!
//! - [`dimse`]: the DICOM service and client; [`http`]: the HTTP endpoint and admin
//!   API; [`server`]: `strata serve`.
//! - [`archive`]: the application layer, the only thing adapters call.
//! - [`ingest`], [`index`], [`tiering`], [`storage`], [`audit`], [`query`],
//!   [`config`], [`metrics`]: the core.
//! - [`dicom`]: formats Strata reads and writes itself.
//!
//! Storage mechanics (the hot disk, the cold object stores) live in the `strata-tiers`
//! crate; `strata-migrate` (in `migrate/`) uses [`dimse::scu`].

pub mod archive;
pub mod audit;
pub mod config;
pub mod dicom;
pub mod dimse;
pub mod hl7;
pub mod http;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod oidc;
pub mod peer;
pub mod query;
pub mod roles;
pub mod server;
pub mod storage;
pub mod tiering;
pub mod tls;

pub use archive::{Error, Principal};
