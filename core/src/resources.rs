//! The resource model: what a service asks for, what a worker or cluster offers, and the kinds
//! of workload (virtualization) and CPU architecture that must match.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How a service's code is run. Oakestra's SLA field `virtualization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Virtualization {
    /// An OCI image run by containerd/runc. Oakestra also spells it `docker`.
    #[serde(rename = "container", alias = "docker")]
    Container,
    /// A unikernel or micro-VM run by QEMU/KVM.
    #[serde(rename = "unikernel")]
    Unikernel,
    /// A WebAssembly (WASI) module run in process by wasmtime.
    #[serde(rename = "wasm")]
    Wasm,
}

impl Virtualization {
    pub const ALL: &'static [Virtualization] = &[
        Virtualization::Container,
        Virtualization::Unikernel,
        Virtualization::Wasm,
    ];

    /// Every spelling accepted in an SLA, canonical names first.
    pub const ACCEPTED_SPELLINGS: &'static [&'static str] =
        &["container", "unikernel", "wasm", "docker"];

    pub fn as_str(self) -> &'static str {
        match self {
            Virtualization::Container => "container",
            Virtualization::Unikernel => "unikernel",
            Virtualization::Wasm => "wasm",
        }
    }

    /// Parses a spelling from an SLA or a worker report (`docker` is `container`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "container" | "docker" => Some(Virtualization::Container),
            "unikernel" => Some(Virtualization::Unikernel),
            "wasm" => Some(Virtualization::Wasm),
            _ => None,
        }
    }
}

impl fmt::Display for Virtualization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CPU architecture, named as Go's GOARCH names it (Oakestra's `arch` and worker reports do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Amd64,
    Arm64,
    Arm,
    #[serde(rename = "386")]
    I386,
    Riscv64,
    Ppc64le,
    S390x,
}

impl Architecture {
    pub const ALL: &'static [Architecture] = &[
        Architecture::Amd64,
        Architecture::Arm64,
        Architecture::Arm,
        Architecture::I386,
        Architecture::Riscv64,
        Architecture::Ppc64le,
        Architecture::S390x,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Amd64 => "amd64",
            Architecture::Arm64 => "arm64",
            Architecture::Arm => "arm",
            Architecture::I386 => "386",
            Architecture::Riscv64 => "riscv64",
            Architecture::Ppc64le => "ppc64le",
            Architecture::S390x => "s390x",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Architecture::ALL.iter().copied().find(|a| a.as_str() == s)
    }

    /// Maps Rust's `std::env::consts::ARCH` to the GOARCH name.
    pub fn from_rust_arch(arch: &str) -> Option<Self> {
        match arch {
            "x86_64" => Some(Architecture::Amd64),
            "aarch64" => Some(Architecture::Arm64),
            "arm" => Some(Architecture::Arm),
            "x86" => Some(Architecture::I386),
            "riscv64" => Some(Architecture::Riscv64),
            "powerpc64" => Some(Architecture::Ppc64le),
            "s390x" => Some(Architecture::S390x),
            _ => None,
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Countable resources: what a service instance needs, or what a worker or cluster has free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// Virtual CPUs (whole cores).
    pub vcpus: u32,
    /// Memory in MiB (Oakestra's SLA `memory` is in MB).
    pub memory_mb: u64,
    /// GPUs.
    pub vgpus: u32,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        vcpus: 0,
        memory_mb: 0,
        vgpus: 0,
    };

    /// Whether `self` (a request) fits into `available`.
    pub fn fits_within(&self, available: &Resources) -> bool {
        self.vcpus <= available.vcpus
            && self.memory_mb <= available.memory_mb
            && self.vgpus <= available.vgpus
    }

    /// What is left of `self` after taking `used`; never below zero.
    pub fn saturating_sub(&self, used: &Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(used.vcpus),
            memory_mb: self.memory_mb.saturating_sub(used.memory_mb),
            vgpus: self.vgpus.saturating_sub(used.vgpus),
        }
    }

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
            vgpus: self.vgpus.saturating_add(other.vgpus),
        }
    }
}

/// How much room a machine (or a set of them) has left, for spreading load: `(100 − cpu%) +
/// (100 − memory%)`, from 0 (full) to 200 (idle). Both schedulers rank by it.
pub fn load_headroom(cpu_percent: f64, memory_percent: f64) -> f64 {
    (100.0 - cpu_percent.clamp(0.0, 100.0)) + (100.0 - memory_percent.clamp(0.0, 100.0))
}

/// The load headroom (of [`load_headroom`]'s 200 points) an instance placed on a worker since
/// its last report is taken to use until the next report shows what it really uses: a worker
/// 20 points less loaded than another takes 10 instances of a burst before the other takes
/// one. A report is seconds old and cannot show them; without this, a burst of placements all
/// lands on the worker (or the cluster) whose last report was best. A cluster spreads the cost
/// over its active workers.
pub const UNREPORTED_COST: f64 = 2.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_is_container() {
        assert_eq!(
            Virtualization::parse("docker"),
            Some(Virtualization::Container)
        );
        let v: Virtualization = serde_json::from_str("\"docker\"").unwrap();
        assert_eq!(v, Virtualization::Container);
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"container\"");
        assert_eq!(Virtualization::parse("crosvm"), None);
    }

    #[test]
    fn architectures_use_goarch_names() {
        for a in Architecture::ALL {
            assert_eq!(Architecture::parse(a.as_str()), Some(*a));
            assert_eq!(
                serde_json::to_string(a).unwrap(),
                format!("\"{}\"", a.as_str())
            );
        }
        assert_eq!(
            Architecture::from_rust_arch("x86_64"),
            Some(Architecture::Amd64)
        );
        assert_eq!(Architecture::parse("x86_64"), None);
    }

    #[test]
    fn resource_arithmetic() {
        let need = Resources {
            vcpus: 2,
            memory_mb: 512,
            vgpus: 0,
        };
        let free = Resources {
            vcpus: 2,
            memory_mb: 1024,
            vgpus: 0,
        };
        assert!(need.fits_within(&free));
        let left = free.saturating_sub(&need);
        assert_eq!(
            left,
            Resources {
                vcpus: 0,
                memory_mb: 512,
                vgpus: 0
            }
        );
        assert!(!need.fits_within(&left));
        assert_eq!(left.saturating_sub(&need).memory_mb, 0);
        assert_eq!(left.saturating_add(&need), free);
    }
}
