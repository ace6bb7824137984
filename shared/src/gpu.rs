//! GPUs on the wire: what a worker's probe found ([`GpuDevice`], in its heartbeat), what a task
//! asks for ([`GpuNeeds`], `needs.gpus`), and how a set of devices is chosen for a task
//! ([`GpuNeeds::choose`]). The master grants leases from these (`acquire_cluster_gpu`); the
//! worker exposes only the leased devices to the task.
//!
//! Why whole devices: a lease is exclusive, like Kubernetes' device plugins and unlike Ray's
//! logical `num_gpus`. Two tasks never share a device through vgas; memory of a device is not
//! partitioned (NVIDIA's MPS or MIG would be), so sharing would only be polite, never safe.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::VgaError;

/// The capability a worker offers when NVRTC loads there: `cuda` tasks need it.
pub const NVRTC_CAPABILITY: &str = "nvrtc";

/// Most devices one task may lease: more than any single host has today, few enough that a
/// typo (`"gpus": 100`) is refused as one.
pub const MAX_GPUS_PER_TASK: u32 = 16;

/// Longest device name a task may ask for (a UUID is 40 characters, a model name about 30).
const MAX_DEVICE_NAME_LEN: usize = 96;

/// One GPU as a worker's probe found it (or, on a test worker, as its declared inventory
/// says: then `simulated` is set and nothing runs on it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuDevice {
    /// The CUDA ordinal on its worker (what `CUDA_VISIBLE_DEVICES` would count from).
    pub index: u32,
    /// `GPU-<uuid>`: stable across reboots and renumbering; leases name devices by it.
    pub uuid: String,
    /// The model, for example `NVIDIA H200`.
    pub name: String,
    pub memory_total_mb: u64,
    /// Free when the worker last looked (each heartbeat).
    pub memory_free_mb: u64,
    pub compute: ComputeCapability,
    /// A device declared for tests (`VGAS_SIMULATED_GPUS`): leases work, kernels do not.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub simulated: bool,
}

impl GpuDevice {
    /// A declared test device (`simulated`): 80 GiB, all free, compute 9.0.
    pub fn simulated(index: u32, uuid: String) -> GpuDevice {
        GpuDevice {
            index,
            uuid,
            name: "Simulated GPU".into(),
            memory_total_mb: SIMULATED_MEMORY_MB,
            memory_free_mb: SIMULATED_MEMORY_MB,
            compute: ComputeCapability { major: 9, minor: 0 },
            simulated: true,
        }
    }
}

/// Memory of a [`GpuDevice::simulated`] device.
const SIMULATED_MEMORY_MB: u64 = 81_920;

/// A CUDA compute capability, `major.minor` (`9.0` for Hopper); on the wire as that string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ComputeCapability {
    pub major: u32,
    pub minor: u32,
}

impl ComputeCapability {
    /// The NVRTC virtual architecture for this capability: `compute_90`.
    pub fn arch(self) -> String {
        format!("compute_{}{}", self.major, self.minor)
    }
}

impl fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for ComputeCapability {
    type Err = VgaError;

    /// `"9.0"`, `"8.6"`: two numbers below 100 joined by a dot.
    fn from_str(s: &str) -> Result<Self, VgaError> {
        let bad = || VgaError::InvalidTask(format!("compute capability {s:?} is not like \"8.0\""));
        let (major, minor) = s.split_once('.').ok_or_else(bad)?;
        let num = |p: &str| {
            p.parse::<u32>()
                .ok()
                .filter(|n| *n < 100 && !p.starts_with('+'))
        };
        match (num(major), num(minor)) {
            (Some(major), Some(minor)) => Ok(ComputeCapability { major, minor }),
            _ => Err(bad()),
        }
    }
}

impl Serialize for ComputeCapability {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ComputeCapability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a task asks of GPUs, `needs.gpus`: a count (`"gpus": 2`), or an object with the count
/// and what each device must have: `{"count":1,"min_free_mb":40000,"min_compute":"8.0",
/// "device":"GPU-…"}`. `device` names one device by UUID or model name (`"NVIDIA H200"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuNeeds {
    pub count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_free_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_compute: Option<ComputeCapability>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// The object form of [`GpuNeeds`] as it arrives.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuNeedsObject {
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    min_free_mb: Option<u64>,
    #[serde(default)]
    min_compute: Option<ComputeCapability>,
    #[serde(default)]
    device: Option<String>,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for GpuNeeds {
    /// A count or the object; an unknown field of the object is named in the error.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = GpuNeeds;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a GPU count or {\"count\":N,\"min_free_mb\":..,\"min_compute\":..,\"device\":..}")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<GpuNeeds, E> {
                u32::try_from(n)
                    .map(GpuNeeds::count)
                    .map_err(|_| E::custom(format!("{n} GPUs is not a count")))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<GpuNeeds, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("{n} GPUs is not a count")))
                    .and_then(|n| self.visit_u64(n))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<GpuNeeds, A::Error> {
                let o =
                    GpuNeedsObject::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(GpuNeeds {
                    count: o.count,
                    min_free_mb: o.min_free_mb,
                    min_compute: o.min_compute,
                    device: o.device,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

impl GpuNeeds {
    /// `count` devices of any kind.
    pub fn count(count: u32) -> GpuNeeds {
        GpuNeeds {
            count,
            min_free_mb: None,
            min_compute: None,
            device: None,
        }
    }

    /// Checks what can be checked without a worker.
    pub fn validate(&self) -> Result<(), VgaError> {
        if self.count == 0 || self.count > MAX_GPUS_PER_TASK {
            return Err(VgaError::InvalidTask(format!(
                "\"needs.gpus\" must ask for 1 to {MAX_GPUS_PER_TASK} devices"
            )));
        }
        if let Some(d) = &self.device {
            if d.is_empty() || d.len() > MAX_DEVICE_NAME_LEN || d.contains('\0') {
                return Err(VgaError::InvalidTask(format!(
                    "\"needs.gpus.device\" must be a UUID or a model name of 1 to \
                     {MAX_DEVICE_NAME_LEN} characters"
                )));
            }
        }
        Ok(())
    }

    /// Whether `d` has what each device must have; `free` compares its free memory (a grant
    /// now), otherwise its total (could it ever).
    pub fn fits(&self, d: &GpuDevice, free: bool) -> bool {
        let memory = if free {
            d.memory_free_mb
        } else {
            d.memory_total_mb
        };
        self.min_free_mb.is_none_or(|m| memory >= m)
            && self.min_compute.is_none_or(|c| d.compute >= c)
            && self
                .device
                .as_deref()
                .is_none_or(|want| d.uuid == want || d.name == want)
    }

    /// Whether a worker with `devices` could ever run the task (all of them idle).
    pub fn could_ever(&self, devices: &[GpuDevice]) -> bool {
        devices.iter().filter(|d| self.fits(d, false)).count() >= self.count as usize
    }

    /// The devices to lease on a worker with `devices`, lowest index first, skipping those
    /// `leased` says are taken; `None` when fewer than `count` fit now.
    pub fn choose(
        &self,
        devices: &[GpuDevice],
        leased: impl Fn(&str) -> bool,
    ) -> Option<Vec<String>> {
        let mut fitting: Vec<&GpuDevice> = devices
            .iter()
            .filter(|d| !leased(&d.uuid) && self.fits(d, true))
            .collect();
        if fitting.len() < self.count as usize {
            return None;
        }
        fitting.sort_by_key(|d| d.index);
        Some(
            fitting
                .into_iter()
                .take(self.count as usize)
                .map(|d| d.uuid.clone())
                .collect(),
        )
    }
}

impl fmt::Display for GpuNeeds {
    /// `2 GPUs with ≥ 40000 MB free, compute ≥ 8.0, named "NVIDIA H200"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.count == 1 { "" } else { "s" };
        write!(f, "{} GPU{plural}", self.count)?;
        let mut parts = Vec::new();
        if let Some(m) = self.min_free_mb {
            parts.push(format!(">= {m} MB free"));
        }
        if let Some(c) = self.min_compute {
            parts.push(format!("compute >= {c}"));
        }
        if let Some(d) = &self.device {
            parts.push(format!("named {d:?}"));
        }
        if !parts.is_empty() {
            write!(f, " with {}", parts.join(", "))?;
        }
        Ok(())
    }
}

/// One device in words, for refusals and status: `GPU-… NVIDIA H200 (143771 MB, 9.0)`.
pub fn describe(d: &GpuDevice) -> String {
    let simulated = if d.simulated { ", simulated" } else { "" };
    format!(
        "{} {} ({} MB, {} MB free, compute {}{simulated})",
        d.uuid, d.name, d.memory_total_mb, d.memory_free_mb, d.compute
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(index: u32, mem: u64, cc: &str) -> GpuDevice {
        GpuDevice {
            index,
            uuid: format!("GPU-{index}"),
            name: "Test GPU".into(),
            memory_total_mb: mem,
            memory_free_mb: mem / 2,
            compute: cc.parse().unwrap(),
            simulated: true,
        }
    }

    #[test]
    fn needs_parse_as_a_count_or_an_object() {
        let n: GpuNeeds = serde_json::from_str("2").unwrap();
        assert_eq!(n, GpuNeeds::count(2));
        let n: GpuNeeds =
            serde_json::from_str(r#"{"min_free_mb":100,"min_compute":"8.6","device":"GPU-1"}"#)
                .unwrap();
        assert_eq!(n.count, 1);
        assert_eq!(n.min_free_mb, Some(100));
        assert_eq!(
            n.min_compute,
            Some(ComputeCapability { major: 8, minor: 6 })
        );
        assert!(serde_json::from_str::<GpuNeeds>(r#"{"count":1,"vram":3}"#).is_err());
        assert!(serde_json::from_str::<GpuNeeds>(r#"{"min_compute":"eight"}"#).is_err());
        let back = serde_json::to_string(&n).unwrap();
        assert_eq!(serde_json::from_str::<GpuNeeds>(&back).unwrap(), n);
    }

    #[test]
    fn counts_and_names_are_bounded() {
        assert!(GpuNeeds::count(0).validate().is_err());
        assert!(GpuNeeds::count(MAX_GPUS_PER_TASK + 1).validate().is_err());
        assert!(GpuNeeds::count(MAX_GPUS_PER_TASK).validate().is_ok());
        let mut n = GpuNeeds::count(1);
        n.device = Some(String::new());
        assert!(n.validate().is_err());
    }

    #[test]
    fn capabilities_compare_and_parse_strictly() {
        let c = |s: &str| s.parse::<ComputeCapability>();
        assert!(c("9.0").unwrap() > c("8.9").unwrap());
        assert!(c("10.0").unwrap() > c("9.0").unwrap());
        assert_eq!(c("9.0").unwrap().arch(), "compute_90");
        for bad in ["9", "9.", ".0", "a.b", "9.0.1", "-1.0", "+9.0", "100.0"] {
            assert!(c(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn choose_takes_free_fitting_devices_lowest_index_first() {
        let devices = [
            dev(2, 80_000, "9.0"),
            dev(0, 16_000, "7.5"),
            dev(1, 80_000, "9.0"),
        ];
        let mut n = GpuNeeds::count(2);
        assert_eq!(n.choose(&devices, |_| false).unwrap(), ["GPU-0", "GPU-1"]);
        assert_eq!(
            n.choose(&devices, |u| u == "GPU-0").unwrap(),
            ["GPU-1", "GPU-2"]
        );
        assert!(n.choose(&devices, |u| u != "GPU-2").is_none());
        n.min_compute = Some("8.0".parse().unwrap());
        assert_eq!(n.choose(&devices, |_| false).unwrap(), ["GPU-1", "GPU-2"]);
        n.min_free_mb = Some(40_000);
        // 80,000 MB total, 40,000 free: fits now and ever.
        assert!(n.choose(&devices, |_| false).is_some());
        n.min_free_mb = Some(50_000);
        assert!(
            n.choose(&devices, |_| false).is_none(),
            "only 40,000 MB free"
        );
        assert!(n.could_ever(&devices), "80,000 MB total");
        n.count = 3;
        assert!(!n.could_ever(&devices));
        let mut named = GpuNeeds::count(1);
        named.device = Some("GPU-2".into());
        assert_eq!(named.choose(&devices, |_| false).unwrap(), ["GPU-2"]);
        named.device = Some("Test GPU".into());
        assert_eq!(named.choose(&devices, |_| false).unwrap(), ["GPU-0"]);
    }
}
