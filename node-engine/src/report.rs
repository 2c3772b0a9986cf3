//! Which sampled reports go out. The engine samples its load every report interval, but an
//! idle worker should cost its uplink almost nothing: a sample goes to the cluster only when
//! it differs noticeably from the last one sent, or when the last one sent is older than the
//! refresh interval. Liveness does not ride on reports (the MQTT keep-alive and the last will
//! carry it), so a quiet worker is not a lost one.
//!
//! Pure: the caller passes the time.

use canopy_proto::worker::{NodeInformation, ResourcesReport, ServiceResources};
use std::time::{Duration, Instant};

/// A sample that can say whether it differs noticeably from the last one sent.
pub trait Noticeable {
    fn differs(&self, sent: &Self) -> bool;
}

/// Holds the last sample sent and decides about the next one.
#[derive(Debug)]
pub struct Gate<T> {
    refresh: Duration,
    sent: Option<(T, Instant)>,
}

impl<T: Noticeable + Clone> Gate<T> {
    pub fn new(refresh: Duration) -> Gate<T> {
        Gate {
            refresh,
            sent: None,
        }
    }

    /// Whether `sample`, taken at `now`, goes out; if so it becomes the last one sent.
    pub fn admit(&mut self, sample: &T, now: Instant) -> bool {
        let due = match &self.sent {
            None => true,
            Some((sent, at)) => {
                now.saturating_duration_since(*at) >= self.refresh || sample.differs(sent)
            }
        };
        if due {
            self.sent = Some((sample.clone(), now));
        }
        due
    }

    /// Records `sample` as sent at `now` whatever it is (a report sent for another reason,
    /// e.g. on a new connection).
    pub fn sent(&mut self, sample: &T, now: Instant) {
        self.sent = Some((sample.clone(), now));
    }
}

/// `a` and `b` differ by at least `floor` and by at least `share` of the larger.
fn apart(a: f64, b: f64, floor: f64, share: f64) -> bool {
    let d = (a - b).abs();
    d >= floor && d >= share * a.abs().max(b.abs())
}

/// The node's load as reported in `information`, with the disk use that rides along.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSample {
    pub info: NodeInformation,
    pub disk_percent: f64,
}

impl Noticeable for NodeSample {
    fn differs(&self, sent: &Self) -> bool {
        let (a, b) = (&self.info, &sent.info);
        a.ip != b.ip
            || a.vcpus != b.vcpus
            || a.vgpus != b.vgpus
            || apart(a.cpu_percent, b.cpu_percent, 5.0, 0.2)
            || apart(a.memory_percent, b.memory_percent, 2.0, 0.1)
            || apart(a.memory as f64, b.memory as f64, 64.0, 0.05)
            || apart(a.gpu_usage, b.gpu_usage, 5.0, 0.2)
            || apart(self.disk_percent, sent.disk_percent, 1.0, 0.0)
    }
}

impl Noticeable for ServiceResources {
    fn differs(&self, sent: &Self) -> bool {
        self.job_name != sent.job_name
            || self.instance != sent.instance
            || self.virtualization != sent.virtualization
            || self.logs != sent.logs
            || apart(self.cpu_percent, sent.cpu_percent, 1.0, 0.2)
            || apart(self.memory as f64, sent.memory as f64, 8.0, 0.1)
            || apart(self.memory_percent, sent.memory_percent, 1.0, 0.1)
            || apart(self.disk as f64, sent.disk as f64, (1 << 20) as f64, 0.1)
    }
}

/// A different set of instances, or any instance's use changed noticeably.
impl Noticeable for ResourcesReport {
    fn differs(&self, sent: &Self) -> bool {
        self.services.len() != sent.services.len()
            || self
                .services
                .iter()
                .zip(&sent.services)
                .any(|(a, b)| a.differs(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpu: f64, memory: u64) -> NodeSample {
        NodeSample {
            info: NodeInformation {
                ip: "192.0.2.7".into(),
                cpu_percent: cpu,
                vcpus: 2,
                memory_percent: 40.0,
                memory,
                vgpus: 0,
                gpu_usage: 0.0,
            },
            disk_percent: 30.0,
        }
    }

    fn service(instance: u32, cpu: f64) -> ServiceResources {
        ServiceResources {
            job_name: "a.b.c.d".into(),
            instance,
            cpu_percent: cpu,
            memory_percent: 1.0,
            memory: 100,
            disk: 0,
            logs: String::new(),
            virtualization: "container".into(),
        }
    }

    const REFRESH: Duration = Duration::from_secs(30);

    #[test]
    fn the_first_sample_goes_out_then_only_noticeable_changes_until_the_refresh() {
        let t0 = Instant::now();
        let mut g = Gate::new(REFRESH);
        assert!(g.admit(&node(2.0, 8000), t0), "nothing sent yet");
        let s = |secs| t0 + Duration::from_secs(secs);
        assert!(!g.admit(&node(4.5, 8010), s(2)), "idle jitter stays home");
        assert!(!g.admit(&node(0.5, 7990), s(4)));
        assert!(g.admit(&node(60.0, 8000), s(6)), "a busy machine is told");
        assert!(!g.admit(&node(66.0, 8000), s(8)), "within a fifth of 66");
        assert!(g.admit(&node(45.0, 8000), s(10)));
        assert!(g.admit(&node(45.0, 7000), s(12)), "memory fell by 1 GB");
        assert!(
            !g.admit(&node(45.0, 7000), s(41)),
            "29 s after the last one sent"
        );
        assert!(g.admit(&node(45.0, 7000), s(42)), "the refresh is due");
    }

    #[test]
    fn a_changed_address_or_disk_goes_out_at_once() {
        let t0 = Instant::now();
        let mut g = Gate::new(REFRESH);
        g.sent(&node(1.0, 100), t0);
        let mut moved = node(1.0, 100);
        moved.info.ip = "192.0.2.8".into();
        assert!(g.admit(&moved, t0 + Duration::from_secs(1)));
        let mut fuller = moved.clone();
        fuller.disk_percent += 1.0;
        assert!(g.admit(&fuller, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn resources_go_out_when_the_instances_or_their_use_change() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let report = |services| ResourcesReport { services };
        let mut g = Gate::new(REFRESH);
        assert!(g.admit(&report(vec![service(0, 0.0)]), t0));
        assert!(!g.admit(&report(vec![service(0, 0.3)]), s(2)), "idle");
        assert!(
            g.admit(&report(vec![service(0, 0.3), service(1, 0.0)]), s(4)),
            "a new instance"
        );
        assert!(
            g.admit(&report(vec![service(0, 7.0), service(1, 0.0)]), s(6)),
            "one started to work: an autoscaler's target of 5 % must see it"
        );
        assert!(
            g.admit(&report(vec![service(0, 0.0), service(1, 0.0)]), s(8)),
            "and stopped"
        );
        let mut chatty = service(0, 0.0);
        chatty.logs = "hello\n".into();
        assert!(g.admit(&report(vec![chatty, service(1, 0.0)]), s(10)));
        assert!(
            g.admit(&report(vec![service(1, 0.0)]), s(12)),
            "one went away"
        );
    }
}
