//! Small helpers for secrets and bytes in the persisted profile: a 32-byte secret that
//! zeroizes and never prints, and serde adapters that store bytes as base64url text.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use rand::rngs::OsRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// A 32-byte secret key. Zeroized on drop; `Debug` is redacted; stored as base64url.
#[derive(Clone)]
pub struct Secret32(Zeroizing<[u8; 32]>);

impl Secret32 {
    /// Wraps raw bytes.
    pub fn new(b: [u8; 32]) -> Self {
        Self(Zeroizing::new(b))
    }

    /// A fresh random secret.
    pub fn random() -> Self {
        let mut b = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut *b);
        Self(b)
    }

    /// The raw bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for Secret32 {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.ct_eq(&*other.0).into()
    }
}

impl Eq for Secret32 {}

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

impl Serialize for Secret32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(*self.0))
    }
}

impl<'de> Deserialize<'de> for Secret32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        let v = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(s.as_bytes())
                .map_err(serde::de::Error::custom)?,
        );
        let a = <[u8; 32]>::try_from(v.as_slice())
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))?;
        Ok(Self::new(a))
    }
}

/// serde adapter: `Vec<u8>` as base64url text.
pub mod b64 {
    use super::*;

    /// Serializes bytes as base64url.
    ///
    /// # Errors
    /// As the serializer.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(v))
    }

    /// Deserializes base64url text.
    ///
    /// # Errors
    /// Text that is not base64url.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// serde adapter: fixed-size byte arrays as base64url text.
pub mod b64_array {
    use super::*;

    /// Serializes bytes as base64url.
    ///
    /// # Errors
    /// As the serializer.
    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(v))
    }

    /// Deserializes base64url text of exactly `N` bytes.
    ///
    /// # Errors
    /// Text that is not base64url or has another length.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let v = URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)?;
        <[u8; N]>::try_from(v.as_slice()).map_err(|_| serde::de::Error::custom("wrong length"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trips_and_does_not_print() {
        let s = Secret32::new([7; 32]);
        let j = serde_json::to_string(&s).unwrap();
        let back: Secret32 = serde_json::from_str(&j).unwrap();
        assert_eq!(back, s);
        assert!(!format!("{s:?}").contains("7"));
        assert!(serde_json::from_str::<Secret32>("\"AAAA\"").is_err());
        assert_ne!(Secret32::random(), Secret32::random());
    }
}
