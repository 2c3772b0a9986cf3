//! A service's autoscaling policy: the domain side of the SLA's `autoscale` extension. The
//! root keeps it on its stored service and decides with it; clusters never see it.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How many instances a service may have, and the use the root aims for while it adds and
/// removes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Autoscale {
    /// Fewest instances of a deployed service (at least 1).
    pub min: u32,
    /// Most instances (at least `min`).
    pub max: u32,
    /// Average CPU of the running instances, in percent of their worker machine (what workers
    /// report: one busy core of a 4-core worker is 25 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cpu_percent: Option<u32>,
    /// Average memory of the running instances, in percent of the service's `memory` (MB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_memory_percent: Option<u32>,
    /// Windows of this service; the root's defaults where unset.
    #[serde(default, skip_serializing_if = "Windows::is_empty")]
    pub windows: Windows,
}

/// The stabilisation windows, each optional (seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windows {
    /// Use above a target for this long adds an instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_secs: Option<u64>,
    /// Use below every target (counted as if one instance fewer carried it) for this long
    /// removes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_secs: Option<u64>,
    /// After a change, nothing changes for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_secs: Option<u64>,
}

impl Windows {
    pub fn is_empty(&self) -> bool {
        *self == Windows::default()
    }
}

/// The windows with every value filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedWindows {
    pub up: Duration,
    pub down: Duration,
    pub cooldown: Duration,
}

impl Default for ResolvedWindows {
    /// 30 s above a target to grow, 120 s below to shrink, 60 s of calm after each change.
    fn default() -> Self {
        ResolvedWindows {
            up: Duration::from_secs(30),
            down: Duration::from_secs(120),
            cooldown: Duration::from_secs(60),
        }
    }
}

impl Windows {
    /// These windows where set, `defaults` elsewhere.
    pub fn or(&self, defaults: ResolvedWindows) -> ResolvedWindows {
        let pick = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_secs);
        ResolvedWindows {
            up: pick(self.up_secs, defaults.up),
            down: pick(self.down_secs, defaults.down),
            cooldown: pick(self.cooldown_secs, defaults.cooldown),
        }
    }
}
