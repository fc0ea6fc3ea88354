//! DICOM formats Strata reads and writes itself, apart from the network service:
//! - [`part10`]: the deterministic Part-10 framing that makes an object's id reproducible,
//!   and the reader of foreign Part-10 files (for `strata import`);
//! - [`header`]: the attributes the index keeps, parsed from the header only;
//! - [`dimse`]: DIMSE command sets (always Implicit VR Little Endian) and status codes.

pub mod dimse;
pub mod framing;
pub mod header;
pub mod part10;
pub mod storage_classes;
