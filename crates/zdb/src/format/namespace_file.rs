//! The namespace descriptor `<index>/<ns>/zdb-namespace`: `{u32 version=1, u8 namelen, u8 passlen,
//! u64 maxsize, u8 flags}` then the name and the password.

use super::{le_u32, le_u64, need, FormatError};

/// File name of the descriptor inside the namespace's index directory.
pub const NAMESPACE_FILE_NAME: &str = "zdb-namespace";
/// Descriptor version 0-db 2.0 writes.
pub const NAMESPACE_VERSION: u32 = 1;
/// Size of the fixed part of the descriptor.
pub const NAMESPACE_HEADER_LEN: usize = 15;
/// Descriptor flag: public (readable, read-only, without the password).
pub const NS_FLAG_PUBLIC: u8 = 1;
/// Descriptor flag: write-once (no overwrite, no delete).
pub const NS_FLAG_WORM: u8 = 2;
/// Descriptor flag: extended fields present (written by newer 0-db versions; kept, not interpreted).
pub const NS_FLAG_EXTENDED: u8 = 4;

/// A namespace's persisted settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceDescriptor {
    /// The namespace name (at most 255 bytes on disk).
    pub name: String,
    /// Password, if any (at most 255 bytes on disk).
    pub password: Option<String>,
    /// Data size limit in bytes, 0 for none.
    pub maxsize: u64,
    /// [`NS_FLAG_PUBLIC`] | [`NS_FLAG_WORM`] | [`NS_FLAG_EXTENDED`].
    pub flags: u8,
}

impl NamespaceDescriptor {
    /// The descriptor's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let name = &self.name.as_bytes()[..self.name.len().min(255)];
        let pass = self.password.as_deref().unwrap_or("").as_bytes();
        let pass = &pass[..pass.len().min(255)];
        let mut b = Vec::with_capacity(NAMESPACE_HEADER_LEN + name.len() + pass.len());
        b.extend_from_slice(&NAMESPACE_VERSION.to_le_bytes());
        b.push(name.len() as u8);
        b.push(pass.len() as u8);
        b.extend_from_slice(&self.maxsize.to_le_bytes());
        b.push(self.flags);
        b.extend_from_slice(name);
        b.extend_from_slice(pass);
        b
    }

    /// Parses a descriptor.
    pub fn decode(buf: &[u8]) -> Result<Self, FormatError> {
        need(buf, NAMESPACE_HEADER_LEN)?;
        let version = le_u32(buf, 0);
        if version != NAMESPACE_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let namelen = buf[4] as usize;
        let passlen = buf[5] as usize;
        need(buf, NAMESPACE_HEADER_LEN + namelen + passlen)?;
        let name_at = NAMESPACE_HEADER_LEN;
        let pass_at = name_at + namelen;
        let name = String::from_utf8_lossy(&buf[name_at..pass_at]).into_owned();
        let password = (passlen > 0)
            .then(|| String::from_utf8_lossy(&buf[pass_at..pass_at + passlen]).into_owned());
        Ok(NamespaceDescriptor {
            name,
            password,
            maxsize: le_u64(buf, 6),
            flags: buf[14],
        })
    }

    /// Whether the public flag is set.
    pub fn public(&self) -> bool {
        self.flags & NS_FLAG_PUBLIC != 0
    }

    /// Whether the worm flag is set.
    pub fn worm(&self) -> bool {
        self.flags & NS_FLAG_WORM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trip() {
        let d = NamespaceDescriptor {
            name: "ns1".into(),
            password: Some("pw".into()),
            maxsize: 1024,
            flags: NS_FLAG_PUBLIC | NS_FLAG_WORM,
        };
        let b = d.encode();
        assert_eq!(b.len(), 15 + 3 + 2);
        assert_eq!(&b[0..4], &[1, 0, 0, 0]);
        assert_eq!(b[4], 3);
        assert_eq!(b[5], 2);
        assert_eq!(&b[6..14], &1024u64.to_le_bytes());
        assert_eq!(b[14], 3);
        assert_eq!(&b[15..], b"ns1pw");
        assert_eq!(NamespaceDescriptor::decode(&b), Ok(d));
        assert!(NamespaceDescriptor::decode(&b[..17]).is_err());
    }
}
