//! Bytes that travel as base64 text in JSON and as a binary value in MessagePack. A segment's
//! packed source is most of what a build sends; as base64 it was a third larger in every copy
//! (the submit, the tasks bucket's record, the worker's assignment). A JSON client writes
//! base64, as before; a MessagePack client may write either.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Binary data: base64 in a human-readable encoding, raw bytes otherwise.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Base64Bytes(pub Vec<u8>);

impl Base64Bytes {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

struct BytesOrBase64;

impl<'de> Visitor<'de> for BytesOrBase64 {
    type Value = Base64Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("base64 text or binary data")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Base64Bytes, E> {
        base64::engine::general_purpose::STANDARD
            .decode(v)
            .map(Base64Bytes)
            .map_err(|e| E::custom(format!("bad base64: {e}")))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Base64Bytes, E> {
        Ok(Base64Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Base64Bytes, E> {
        Ok(Base64Bytes(v))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Base64Bytes, D::Error> {
        d.deserialize_any(BytesOrBase64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_as, encode, Encoding};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        data: Base64Bytes,
    }

    #[test]
    fn base64_in_json_bytes_in_msgpack_and_both_read_back() {
        let h = Holder {
            data: Base64Bytes(vec![0, 1, 2, 255]),
        };
        let json = encode(Encoding::Json, &h).unwrap();
        assert_eq!(json, br#"{"data":"AAEC/w=="}"#);
        assert_eq!(decode_as::<Holder>(Encoding::Json, &json).unwrap(), h);
        let packed = encode(Encoding::MsgPack, &h).unwrap();
        // A map of one, "data", then bin8 of 4 bytes: no base64 text.
        assert!(packed.ends_with(&[0xc4, 4, 0, 1, 2, 255]), "{packed:?}");
        assert_eq!(decode_as::<Holder>(Encoding::MsgPack, &packed).unwrap(), h);
        // A MessagePack client that writes base64 text, as the JSON protocol says, is read too.
        #[derive(Serialize)]
        struct Text<'a> {
            data: &'a str,
        }
        let text = encode(Encoding::MsgPack, &Text { data: "AAEC/w==" }).unwrap();
        assert_eq!(decode_as::<Holder>(Encoding::MsgPack, &text).unwrap(), h);
        let bad = decode_as::<Holder>(Encoding::Json, br#"{"data":"not base64!"}"#);
        assert!(
            bad.unwrap_err().to_string().contains("bad base64"),
            "a clear error"
        );
    }
}
