//! The master's side of the build farm: `vgas.build.submit` (`service`: a `BuildPlan` from any
//! NATS client is resolved against the live workers' compiler identities, its wasm `steps`
//! run as `wasm` tasks, its segments dispatched and linked here, its binary put into the
//! artifacts bucket). The segments, the cache and the link are `vgas_client::farm`'s, the
//! same code a submitter runs.

pub mod service;
pub mod steps;
