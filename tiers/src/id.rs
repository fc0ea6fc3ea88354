//! Object identities: the blake3 hash of an object's bytes, written as 64 lowercase hex
//! digits, and the `ab/cd/<hex>` fan-out path under which the hot tier files it.
//!
//! An id is never derived from network-supplied strings; only from bytes we hashed
//! ourselves, or from a 64-digit hex string that [`ObjectId::from_hex`] validated.

use std::fmt;
use std::path::PathBuf;

/// The blake3 hash of an object's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 32]);

impl ObjectId {
    pub const LEN: usize = 32;

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ObjectId(bytes)
    }

    /// Parses exactly 64 lowercase or uppercase hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let hi = (chunk[0] as char).to_digit(16)?;
            let lo = (chunk[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(ObjectId(out))
    }

    /// Parses a raw 32-byte slice (as stored in index keys).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(ObjectId)
    }

    pub fn of_bytes(bytes: &[u8]) -> Self {
        ObjectId(*blake3::hash(bytes).as_bytes())
    }

    pub fn from_hash(hash: blake3::Hash) -> Self {
        ObjectId(*hash.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The relative fan-out path: `ab/cd/abcd…` (first two bytes as directories).
    pub fn fanout_path(&self) -> PathBuf {
        let hex = self.to_hex();
        PathBuf::from(&hex[0..2]).join(&hex[2..4]).join(&hex)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_fanout() {
        let id = ObjectId::of_bytes(b"hello");
        let hex = id.to_hex();
        assert_eq!(hex, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(ObjectId::from_hex(&hex), Some(id));
        assert_eq!(ObjectId::from_hex(&hex.to_uppercase()), Some(id));
        let p = id.fanout_path();
        assert_eq!(
            p,
            PathBuf::from(format!("{}/{}/{}", &hex[..2], &hex[2..4], hex))
        );
    }

    #[test]
    fn rejects_bad_hex() {
        assert!(ObjectId::from_hex("abc").is_none());
        assert!(ObjectId::from_hex(&"g".repeat(64)).is_none());
        assert!(ObjectId::from_hex(&"../".repeat(22)[..64]).is_none());
    }
}
