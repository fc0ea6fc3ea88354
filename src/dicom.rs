//! DICOM formats Strata reads and writes itself, apart from the network service:
//! - [`part10`]: the deterministic Part-10 framing that makes an object's id reproducible,
//!   and the reader of foreign Part-10 files (for `strata import`);
//! - [`framing`]: the one-pass walker that checks a data set's framing (stored objects,
//!   query identifiers);
//! - [`header`]: the attributes the index keeps, parsed from the header only;
//! - [`metadata`]: the per-instance metadata record (DICOM JSON of the data set);
//! - [`charset`]: Specific Character Set decoding (PS3.5 §6.1, Annexes H, I, J);
//! - [`da`]: DA (date) values;
//! - [`status`]: DIMSE status codes;
//! - [`storage_classes`]: the storage SOP classes (PS3.4 Annex B);
//! - [`transcode`]: a stored data set in another transfer syntax;
//! - [`render`]: frames and rendered images of a stored object (WADO-RS).
//!
//! The DIMSE command codec lives with the network service, in [`crate::dimse::command`].

pub mod charset;
pub mod coerce;
pub mod da;
pub mod framing;
pub mod header;
pub mod metadata;
pub mod part10;
pub mod render;
pub mod status;
pub mod storage_classes;
pub mod transcode;
