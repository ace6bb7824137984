//! Submitting many tasks in few requests: specs grouped into batches that fit the server's
//! message size and [`MAX_BATCH_TASKS`], each batch one `vgas.task.submit` request whose
//! answer says, task by task, whether it was accepted (see `docs/protocol.md`, batches).

use anyhow::{Context, Result};
use vgas_shared::codec::{encode, Reply};
use vgas_shared::error::WireError;
use vgas_shared::limits::{MAX_BATCH_BYTES, MAX_BATCH_TASKS};
use vgas_shared::wire::{SubmitReply, TaskSpec};
use vgas_shared::{Encoding, TaskId};

use super::{Swarm, REQUEST_TIMEOUT};

/// Room kept in a batch message for the array's own framing and the request's headers.
const FRAMING_BYTES: usize = 4 * 1024;

impl Swarm {
    /// Submits `specs` in as few batches as fit; one answer per spec, in order. A spec
    /// without an id gets a random one first, so every accepted task's id is known. `Err`
    /// only when a batch got no answer at all (the tasks of earlier batches stay accepted).
    pub async fn submit_batch(
        &self,
        mut specs: Vec<TaskSpec>,
    ) -> Result<Vec<Result<SubmitReply, WireError>>> {
        for s in &mut specs {
            s.task_id.get_or_insert_with(TaskId::random);
        }
        let room = (self.client.server_info().max_payload)
            .min(MAX_BATCH_BYTES)
            .saturating_sub(FRAMING_BYTES);
        let mut answers = Vec::with_capacity(specs.len());
        let mut batch: Vec<TaskSpec> = Vec::new();
        let mut size = 0;
        for spec in specs {
            let len = encode(Encoding::MsgPack, &spec)?.len();
            if !batch.is_empty() && (size + len > room || batch.len() == MAX_BATCH_TASKS) {
                answers.extend(self.send_batch(std::mem::take(&mut batch)).await?);
                size = 0;
            }
            size += len;
            batch.push(spec);
        }
        if !batch.is_empty() {
            answers.extend(self.send_batch(batch).await?);
        }
        Ok(answers)
    }

    async fn send_batch(
        &self,
        batch: Vec<TaskSpec>,
    ) -> Result<Vec<Result<SubmitReply, WireError>>> {
        let n = batch.len();
        let replies: Vec<Reply<SubmitReply>> = self
            .request_within(self.subjects.submit(), &batch, REQUEST_TIMEOUT * 3)
            .await
            .with_context(|| format!("submit a batch of {n} tasks"))?;
        anyhow::ensure!(
            replies.len() == n,
            "the master answered {} of a batch of {n} tasks",
            replies.len()
        );
        Ok(replies.into_iter().map(Reply::into_result).collect())
    }
}
