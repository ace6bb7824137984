//! The one codec: MessagePack with field names between our own processes, JSON wherever a
//! person types a payload. A request's encoding is detected from its bytes (a JSON object
//! starts with `{`, a MessagePack map never does) and the reply is written in the same one.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{CodecError, WireError};

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// What people type with the `nats` CLI; also what an empty payload means.
    #[default]
    Json,
    /// What vgas processes send each other (`rmp_serde::to_vec_named`).
    MsgPack,
}

impl Encoding {
    /// Guesses the encoding of `payload`: JSON if the first non-blank byte opens a JSON
    /// value a person would type (`{`, `[`, `"`) or the payload is blank, else MessagePack.
    pub fn detect(payload: &[u8]) -> Encoding {
        match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            None | Some(b'{' | b'[' | b'"') => Encoding::Json,
            _ => Encoding::MsgPack,
        }
    }
}

/// Encodes `value` in `encoding`.
pub fn encode<T: Serialize + ?Sized>(encoding: Encoding, value: &T) -> Result<Vec<u8>, CodecError> {
    match encoding {
        Encoding::Json => serde_json::to_vec(value).map_err(CodecError::Json),
        Encoding::MsgPack => rmp_serde::to_vec_named(value).map_err(CodecError::MsgPackEncode),
    }
}

/// Decodes `payload` in a known encoding. A blank JSON payload reads as `{}` so that
/// `nats req vgas.status ''` works.
pub fn decode_as<T: DeserializeOwned>(encoding: Encoding, payload: &[u8]) -> Result<T, CodecError> {
    match encoding {
        Encoding::Json if payload.iter().all(u8::is_ascii_whitespace) => {
            serde_json::from_slice(b"{}").map_err(CodecError::Json)
        }
        Encoding::Json => serde_json::from_slice(payload).map_err(CodecError::Json),
        Encoding::MsgPack => rmp_serde::from_slice(payload).map_err(CodecError::MsgPackDecode),
    }
}

/// Decodes `payload`, refusing more than `limit` bytes, and says which encoding it was in.
pub fn decode<T: DeserializeOwned>(
    payload: &[u8],
    limit: usize,
) -> Result<(T, Encoding), CodecError> {
    if payload.len() > limit {
        return Err(CodecError::TooLarge {
            size: payload.len(),
            limit,
        });
    }
    let encoding = Encoding::detect(payload);
    decode_as(encoding, payload).map(|v| (v, encoding))
}

/// A reply as it is read back: either `{"error":{...}}` or the value itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply<T> {
    Err { error: WireError },
    Ok(T),
}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, WireError> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Err { error } => Err(error),
        }
    }
}

/// Encodes an error reply. Never fails: an error body is plain strings.
pub fn encode_error(encoding: Encoding, error: &WireError) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a WireError,
    }
    encode(encoding, &Body { error }).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u32,
        #[serde(default)]
        b: String,
    }

    #[test]
    fn detects_encodings() {
        assert_eq!(Encoding::detect(b""), Encoding::Json);
        assert_eq!(Encoding::detect(b"  {\"a\":1}"), Encoding::Json);
        let mp = encode(
            Encoding::MsgPack,
            &Sample {
                a: 1,
                b: "x".into(),
            },
        )
        .unwrap();
        assert_eq!(Encoding::detect(&mp), Encoding::MsgPack);
    }

    #[test]
    fn round_trips_both_encodings() {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let s = Sample {
                a: 7,
                b: "hi".into(),
            };
            let bytes = encode(enc, &s).unwrap();
            let (back, seen): (Sample, _) = decode(&bytes, 1024).unwrap();
            assert_eq!((back, seen), (s, enc));
        }
    }

    #[test]
    fn refuses_oversized_and_garbage() {
        assert!(matches!(
            decode::<Sample>(&[b' '; 10], 5),
            Err(CodecError::TooLarge { size: 10, limit: 5 })
        ));
        assert!(decode::<Sample>(b"{not json", 100).is_err());
        assert!(decode::<Sample>(&[0xc1, 0xff, 0x00], 100).is_err());
    }

    #[test]
    fn error_replies_read_back_as_errors() {
        let e = WireError {
            code: ErrorCode::Busy,
            message: "queue full".into(),
        };
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let bytes = encode_error(enc, &e);
            let r: Reply<Sample> = decode_as(enc, &bytes).unwrap();
            assert_eq!(r.into_result().unwrap_err(), e);
        }
        let json = String::from_utf8(encode_error(Encoding::Json, &e)).unwrap();
        assert_eq!(json, r#"{"error":{"code":"busy","message":"queue full"}}"#);
    }
}
