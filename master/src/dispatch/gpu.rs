//! GPU leases (seed: `ResourceManager::acquire_cluster_gpu`): whole devices, exclusive, bound
//! to one attempt of one task.
//!
//! A lease is part of the task's assignment: [`ResourceManager::acquire_cluster_gpu`] picks a
//! worker by Gatling rotation among those with the devices free and takes them in memory; the
//! dispatcher then writes the assignment record, which names the devices, before it sends the
//! assignment, so a lease is durable before the worker hears of it. It ends with the attempt:
//! a result, a cancel, a lost worker, a refused assignment or a record that could not be
//! written all release it. A restarted master takes its leases back from the assignment
//! records ([`ResourceManager::restore`]).
//!
//! Never granted twice: only the dispatcher actor grants and releases, one command at a time,
//! and a device is taken in the table before the next task is considered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vgas_shared::gpu::{describe, GpuNeeds};
use vgas_shared::wire::Needs;
use vgas_shared::{TaskId, WorkerId};

use crate::scheduler::{AgentScheduler, NoWorker, WorkerEntry};

/// The leases held now, shared with the status endpoint, which shows who holds what.
pub type LeaseTable = Arc<Mutex<Leases>>;

/// Leases held now, indexed both ways: by worker and device (is this one taken?), and by task
/// (what does this attempt give back?), so a grant and a release never scan the whole table.
#[derive(Debug, Default)]
pub struct Leases {
    by_device: HashMap<WorkerId, HashMap<String, TaskId>>,
    by_task: HashMap<TaskId, (WorkerId, Vec<String>)>,
}

impl Leases {
    fn taken(&self, worker: &WorkerId, uuid: &str) -> bool {
        self.by_device
            .get(worker)
            .is_some_and(|d| d.contains_key(uuid))
    }

    fn insert(&mut self, task: &TaskId, worker: &WorkerId, devices: &[String]) {
        let held = self.by_device.entry(worker.clone()).or_default();
        for d in devices {
            held.insert(d.clone(), task.clone());
        }
        let (_, all) = self
            .by_task
            .entry(task.clone())
            .or_insert_with(|| (worker.clone(), Vec::new()));
        all.extend_from_slice(devices);
    }

    fn remove(&mut self, task: &TaskId) {
        let Some((worker, devices)) = self.by_task.remove(task) else {
            return;
        };
        if let Some(held) = self.by_device.get_mut(&worker) {
            for d in &devices {
                held.remove(d);
            }
            if held.is_empty() {
                self.by_device.remove(&worker);
            }
        }
    }

    /// The devices of `worker` leased now, with their holders, sorted.
    pub fn of_worker(&self, worker: &WorkerId) -> Vec<(String, TaskId)> {
        let mut held: Vec<(String, TaskId)> = self
            .by_device
            .get(worker)
            .map(|d| d.iter().map(|(u, t)| (u.clone(), t.clone())).collect())
            .unwrap_or_default();
        held.sort();
        held
    }

    /// Every lease held now: (worker, device, task).
    pub fn all(&self) -> Vec<(WorkerId, String, TaskId)> {
        self.by_device
            .iter()
            .flat_map(|(w, d)| d.iter().map(|(u, t)| (w.clone(), u.clone(), t.clone())))
            .collect()
    }

    /// Devices leased now.
    pub fn len(&self) -> usize {
        self.by_device.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }
}

/// A granted lease (seed: `ResourceLock`): the worker and the devices one attempt may use.
#[derive(Debug, Clone)]
pub struct ResourceLock {
    pub task_id: TaskId,
    pub worker: Arc<WorkerEntry>,
    /// Device UUIDs, lowest index first.
    pub devices: Vec<String>,
}

/// The lease table and the operations on it.
#[derive(Debug, Default)]
pub struct ResourceManager {
    table: LeaseTable,
}

impl ResourceManager {
    /// The table, shared (for status).
    pub fn table(&self) -> LeaseTable {
        self.table.clone()
    }

    /// Picks a worker that has every capability of `needs` and `gpus` free now, reserves one
    /// of its slots and leases the devices to `task`. `AllBusy` when some worker could run it
    /// but none has the devices (or a slot) free now; `NoneCapable` when none could at all.
    pub fn acquire_cluster_gpu(
        &self,
        sched: &AgentScheduler,
        task: &TaskId,
        needs: &Needs,
        gpus: &GpuNeeds,
    ) -> Result<ResourceLock, NoWorker> {
        let mut table = self.table.lock().expect("lease table");
        let (worker, devices) = sched.gatling_rotate_next_where(needs, |w| {
            gpus.choose(&w.gpus(), |uuid| table.taken(&w.id, uuid))
        })?;
        table.insert(task, &worker.id, &devices);
        Ok(ResourceLock {
            task_id: task.clone(),
            worker,
            devices,
        })
    }

    /// Ends every lease `task` holds.
    pub fn release(&self, task: &TaskId) {
        self.table.lock().expect("lease table").remove(task);
    }

    /// After a restart: `task` holds `devices` on `worker`, as its assignment record says.
    pub fn restore(&self, task: &TaskId, worker: &WorkerId, devices: &[String]) {
        self.table
            .lock()
            .expect("lease table")
            .insert(task, worker, devices);
    }

    /// Devices leased now.
    pub fn leased(&self) -> usize {
        self.table.lock().expect("lease table").len()
    }
}

/// Why a task that needs `gpus` can never run here, with what the swarm has: for the submitter.
pub fn unsatisfiable(gpus: &GpuNeeds, sched: &AgentScheduler) -> String {
    let inventory = sched.gpu_inventory();
    let mut have: Vec<String> = inventory
        .iter()
        .flat_map(|(w, devices)| devices.iter().map(move |d| format!("{w}: {}", describe(d))))
        .collect();
    if have.is_empty() {
        have.push(format!(
            "no GPUs on any of the {} live workers",
            inventory.len()
        ));
    }
    format!(
        "no worker can ever give this task {gpus} (with its capabilities); the swarm has: {}",
        have.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use vgas_shared::gpu::GpuDevice;

    use super::*;

    fn worker(id: &str, gpus: u32) -> Arc<WorkerEntry> {
        let w = WorkerEntry::synthetic(id, 8, &[]);
        w.set_gpus(
            (0..gpus)
                .map(|i| GpuDevice::simulated(i, format!("GPU-{id}-{i}")))
                .collect(),
        );
        w
    }

    fn needs(n: u32) -> (Needs, GpuNeeds) {
        let g = GpuNeeds::count(n);
        let needs = Needs {
            capabilities: Vec::new(),
            gpus: Some(g.clone()),
        };
        (needs, g)
    }

    #[test]
    fn leases_are_exclusive_and_released_per_task() {
        let sched = AgentScheduler::with_pool(vec![worker("a", 2), worker("b", 1)]);
        let rm = ResourceManager::default();
        let (n1, g1) = needs(1);
        let mut held = Vec::new();
        for i in 0..3 {
            let id = TaskId::parse(&format!("t{i}")).unwrap();
            let lock = rm.acquire_cluster_gpu(&sched, &id, &n1, &g1).unwrap();
            held.push(lock);
        }
        let mut devices: Vec<&String> = held.iter().flat_map(|l| &l.devices).collect();
        devices.sort();
        devices.dedup();
        assert_eq!(devices.len(), 3, "three tasks, three distinct devices");
        let t3 = TaskId::parse("t3").unwrap();
        assert_eq!(
            rm.acquire_cluster_gpu(&sched, &t3, &n1, &g1).unwrap_err(),
            NoWorker::AllBusy
        );
        let (n2, g2) = needs(2);
        assert_eq!(
            rm.acquire_cluster_gpu(&sched, &t3, &n2, &g2).unwrap_err(),
            NoWorker::AllBusy,
            "a has two devices, both taken"
        );
        let (n3, g3) = needs(3);
        assert_eq!(
            rm.acquire_cluster_gpu(&sched, &t3, &n3, &g3).unwrap_err(),
            NoWorker::NoneCapable,
            "no worker has three"
        );
        rm.release(&held[0].task_id);
        held[0].worker.release();
        let again = rm.acquire_cluster_gpu(&sched, &t3, &n1, &g1).unwrap();
        assert_eq!(again.devices, held[0].devices);
        assert_eq!(rm.leased(), 3);
    }

    #[test]
    fn restored_leases_are_not_granted_again() {
        let a = worker("a", 1);
        let sched = AgentScheduler::with_pool(vec![a.clone()]);
        let rm = ResourceManager::default();
        let old = TaskId::parse("old").unwrap();
        rm.restore(&old, &a.id, &["GPU-a-0".to_owned()]);
        let (n, g) = needs(1);
        let new = TaskId::parse("new").unwrap();
        assert_eq!(
            rm.acquire_cluster_gpu(&sched, &new, &n, &g).unwrap_err(),
            NoWorker::AllBusy
        );
        rm.release(&old);
        assert!(rm.acquire_cluster_gpu(&sched, &new, &n, &g).is_ok());
    }

    #[test]
    fn many_requests_never_share_a_device() {
        let pool: Vec<_> = (0..8).map(|i| worker(&format!("w{i}"), 4)).collect();
        let sched = AgentScheduler::with_pool(pool);
        let rm = ResourceManager::default();
        let mut granted = Vec::new();
        for i in 0..100u32 {
            let (n, g) = needs(1 + i % 3);
            let id = TaskId::parse(&format!("t{i}")).unwrap();
            if let Ok(lock) = rm.acquire_cluster_gpu(&sched, &id, &n, &g) {
                granted.push(lock);
            }
            // Release every fifth holder, as finished tasks would.
            if i % 5 == 4 && !granted.is_empty() {
                let gone = granted.remove(0);
                rm.release(&gone.task_id);
                gone.worker.release();
            }
        }
        let mut seen = std::collections::HashSet::new();
        for l in &granted {
            for d in &l.devices {
                assert!(seen.insert((l.worker.id.clone(), d.clone())), "{d} twice");
            }
        }
        assert_eq!(rm.leased(), seen.len());
        assert!(seen.len() <= 32);
    }
}
