//! Submit a `BuildPlan` on `vgas.build.submit` and follow its `BuildUpdate`s to the
//! `finished` one; fetch the binary the master linked from the artifacts bucket.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::Subscriber;
use futures::StreamExt;
use vgas_shared::codec::decode_as;
use vgas_shared::farm::{BuildAccepted, BuildPlan, BuildUpdate, TargetBinary};
use vgas_shared::limits::MAX_ARTIFACT_BYTES;
use vgas_shared::{Encoding, TaskId};

use super::objects::set_mode;
use super::Swarm;

/// The mode a linked binary gets on the submitter's disk.
const BINARY_MODE: u32 = 0o755;

/// A submitted plan, its updates subscribed before the submit.
#[derive(Debug)]
pub struct PlanFollowing {
    pub accepted: BuildAccepted,
    updates: Subscriber,
}

impl Swarm {
    /// Submits `plan` under a fresh build id (any id it named is replaced, so its updates are
    /// subscribed before the master publishes the first one). A refusal is an error that
    /// downcasts to [`super::Refused`].
    pub async fn submit_plan(
        &self,
        mut plan: BuildPlan,
        timeout: Duration,
    ) -> Result<PlanFollowing> {
        let build_id = TaskId::random().to_string();
        let updates = self
            .client
            .subscribe(self.subjects.build_updates(&build_id))
            .await?;
        plan.build_id = Some(build_id);
        let accepted: BuildAccepted = self
            .request_within(self.subjects.build_submit(), &plan, timeout)
            .await?;
        Ok(PlanFollowing { accepted, updates })
    }

    /// Downloads a plan's linked binary to `to` (mode 0755).
    pub async fn fetch_binary(&self, binary: &TargetBinary, to: &Path) -> Result<()> {
        let Some(object) = &binary.object else {
            bail!("the build's binary {} was not uploaded", binary.path);
        };
        self.fetch_to_file(
            &self.subjects.artifacts_bucket(),
            object,
            binary.size,
            MAX_ARTIFACT_BYTES,
            to,
        )
        .await
        .with_context(|| format!("the build's binary {}", binary.path))?;
        set_mode(to, BINARY_MODE)
    }
}

impl PlanFollowing {
    /// The next update; `finished` is the last one.
    pub async fn next(&mut self) -> Result<BuildUpdate> {
        loop {
            let Some(msg) = self.updates.next().await else {
                bail!("the updates of build {} ended", self.accepted.build_id);
            };
            if let Ok(u) = decode_as::<BuildUpdate>(Encoding::detect(&msg.payload), &msg.payload) {
                return Ok(u);
            }
        }
    }

    /// Follows to the `finished` update, handing every other one to `each`.
    pub async fn finish<F: FnMut(BuildUpdate)>(mut self, mut each: F) -> Result<BuildUpdate> {
        loop {
            match self.next().await? {
                u @ BuildUpdate::Finished { .. } => return Ok(u),
                u => each(u),
            }
        }
    }
}
