//! Batch submission: one `vgas.task.submit` request carrying an array of specs. Each spec is
//! checked and accepted as if it came alone (its own id, record, events, and its own answer),
//! and the records of the whole batch are written at once instead of one round trip each:
//! the answer is an array of per-task answers in the request's order, each a `SubmitReply` or
//! an `{"error":...}`. A batch that does not decode, or is too large, is refused whole and
//! changes nothing.

use futures::future::join_all;
use vgas_shared::codec::{decode, Reply};
use vgas_shared::error::WireError;
use vgas_shared::limits::{MAX_BATCH_BYTES, MAX_BATCH_TASKS};
use vgas_shared::wire::TaskSpec;
use vgas_shared::{Encoding, ErrorCode, VgaError};

use super::{err, reply, Answer, Handlers};

/// Whether a submit payload is an array of specs: JSON whose first character is `[`, or a
/// MessagePack array.
pub(super) fn is_batch(payload: &[u8]) -> bool {
    match Encoding::detect(payload) {
        Encoding::Json => payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'['),
        // fixarray, array 16, array 32.
        Encoding::MsgPack => matches!(payload.first(), Some(0x90..=0x9f | 0xdc | 0xdd)),
    }
}

impl Handlers {
    /// Accepts every spec of the batch that can be accepted, at once; answers each.
    pub(super) async fn submit_batch(&self, payload: &[u8], enc: Encoding) -> Answer {
        let specs: Vec<TaskSpec> = match decode(payload, MAX_BATCH_BYTES) {
            Ok((specs, _)) => specs,
            Err(e) => return Err(WireError::from(&VgaError::from(e))),
        };
        if specs.is_empty() || specs.len() > MAX_BATCH_TASKS {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "a batch holds 1 to {MAX_BATCH_TASKS} tasks; this one has {}",
                    specs.len()
                ),
            ));
        }
        let answers = join_all(specs.into_iter().map(|spec| async move {
            let accepted = match self.admit(spec) {
                Ok(spec) => self.accept(spec, enc, None).await,
                Err(e) => Err(e),
            };
            match accepted {
                Ok(r) => Reply::Ok(r),
                Err(error) => Reply::Err { error },
            }
        }))
        .await;
        reply(enc, &answers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_batches_in_either_encoding() {
        assert!(is_batch(b"  [{\"cmd\":[\"true\"]}]"));
        assert!(!is_batch(b"{\"cmd\":[\"true\"]}"));
        assert!(!is_batch(b""));
        let one = vgas_shared::codec::encode(Encoding::MsgPack, &TaskSpec::default()).unwrap();
        let many =
            vgas_shared::codec::encode(Encoding::MsgPack, &vec![TaskSpec::default(); 3]).unwrap();
        let lots =
            vgas_shared::codec::encode(Encoding::MsgPack, &vec![TaskSpec::default(); 20]).unwrap();
        assert!(!is_batch(&one));
        assert!(is_batch(&many) && is_batch(&lots));
    }
}
