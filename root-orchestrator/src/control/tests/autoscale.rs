//! [`step`], the pure autoscaling decision, as scenarios: a policy and a sequence of moments
//! (seconds after the start, the instances then, what must be decided), with the remembered
//! [`Track`] carried from one moment to the next. No sleeping: time is given.

use crate::control::autoscale::{Input, Sample, Step, Track, step};
use canopy_core::autoscale::{Autoscale, ResolvedWindows, Windows};
use canopy_core::{InstanceNumber, InstanceStatus as S};
use std::time::{Duration, Instant};

/// What one moment must decide: nothing, one more (its `why` contains the text), or the
/// removal of instance N (its `why` contains the text).
#[derive(Debug)]
enum Expect {
    Nothing,
    Up(&'static str),
    Down(u32, &'static str),
}
use Expect::{Down, Nothing, Up};

/// One instance: its status, CPU (% of its worker) and memory (MB).
type Inst = (S, f64, u64);

/// A RUNNING instance using `cpu` % of its worker.
fn r(cpu: f64) -> Inst {
    (S::Running, cpu, 0)
}

/// An instance in `status`, using nothing.
fn at(status: S) -> Inst {
    (status, 0.0, 0)
}

struct Case {
    name: &'static str,
    /// min, max, target cpu %, target memory % (of 100 MB).
    policy: (u32, u32, Option<u32>, Option<u32>),
    moments: Vec<(f64, Vec<Inst>, Expect)>,
}

/// The default windows: up 30 s, down 120 s, cooldown 60 s.
fn windows() -> ResolvedWindows {
    ResolvedWindows::default()
}

fn run(case: &Case) {
    let (min, max, cpu, memory) = case.policy;
    let policy = Autoscale {
        min,
        max,
        target_cpu_percent: cpu,
        target_memory_percent: memory,
        windows: Windows::default(),
    };
    let start = Instant::now();
    let mut track = Track::default();
    for (secs, instances, expect) in &case.moments {
        let input = Input {
            policy: &policy,
            windows: windows(),
            memory_mb: 100,
            instances: instances
                .iter()
                .enumerate()
                .map(|(n, &(status, cpu_percent, memory_mb))| Sample {
                    number: InstanceNumber(n as u32),
                    status,
                    cpu_percent,
                    memory_mb,
                })
                .collect(),
        };
        let now = start + Duration::from_secs_f64(*secs);
        let (decision, next) = step(&input, track, now);
        track = next;
        let ok = match (expect, &decision) {
            (Nothing, None) => true,
            (Up(text), Some(Step::Up { why })) => why.contains(text),
            (Down(n, text), Some(Step::Down { instance, why })) => {
                instance.0 == *n && why.contains(text)
            }
            _ => false,
        };
        assert!(
            ok,
            "{}: at {secs} s expected {expect:?}, decided {decision:?}",
            case.name
        );
    }
}

#[test]
fn autoscaling_decisions() {
    let cases = [
        Case {
            name: "a service without instances is not deployed: left alone",
            policy: (2, 3, Some(50), None),
            moments: vec![(0.0, vec![], Nothing), (500.0, vec![], Nothing)],
        },
        Case {
            name: "below min: one more at once, on every tick, without a window",
            policy: (3, 5, Some(50), None),
            moments: vec![
                (
                    0.0,
                    vec![at(S::Requested)],
                    Up("1 instance(s), below min 3"),
                ),
                (
                    0.5,
                    vec![at(S::Requested), at(S::Requested)],
                    Up("below min 3"),
                ),
                (
                    1.0,
                    vec![at(S::Requested), at(S::Requested), at(S::Requested)],
                    Nothing,
                ),
            ],
        },
        Case {
            name: "above max (scaled by hand): one fewer at once, the highest number",
            policy: (1, 2, Some(50), None),
            moments: vec![(
                0.0,
                vec![r(90.0), r(90.0), r(90.0)],
                Down(2, "3 instance(s), above max 2"),
            )],
        },
        Case {
            name: "use above the target for the up window: one more",
            policy: (1, 3, Some(50), None),
            moments: vec![
                (0.0, vec![r(90.0)], Nothing),
                (29.5, vec![r(90.0)], Nothing),
                (30.0, vec![r(95.0)], Up("cpu 95% > target 50% for 30 s")),
            ],
        },
        Case {
            name: "a dip below the target starts the up window again",
            policy: (1, 3, Some(50), None),
            moments: vec![
                (0.0, vec![r(90.0)], Nothing),
                (20.0, vec![r(40.0)], Nothing),
                (40.0, vec![r(90.0)], Nothing),
                (69.0, vec![r(90.0)], Nothing),
                (70.0, vec![r(90.0)], Up("for 30 s")),
            ],
        },
        Case {
            name: "exactly at the target is not above it",
            policy: (1, 3, Some(50), None),
            moments: vec![
                (0.0, vec![r(50.0)], Nothing),
                (100.0, vec![r(50.0)], Nothing),
            ],
        },
        Case {
            name: "after a change, the cooldown: nothing until it has passed",
            policy: (1, 5, Some(50), None),
            moments: vec![
                (0.0, vec![r(90.0)], Nothing),
                (30.0, vec![r(90.0)], Up("for 30 s")),
                (31.0, vec![r(90.0), r(90.0)], Nothing),
                // Above for 30 s again, but within the cooldown.
                (61.0, vec![r(90.0), r(90.0)], Nothing),
                (89.0, vec![r(90.0), r(90.0)], Nothing),
                (90.0, vec![r(90.0), r(90.0)], Up("for 59 s")),
            ],
        },
        Case {
            name: "an instance still starting holds growth back; it counts, without load",
            policy: (1, 5, Some(50), None),
            moments: vec![
                (0.0, vec![r(90.0), at(S::Creating)], Nothing),
                (45.0, vec![r(90.0), at(S::ClusterScheduled)], Nothing),
                (100.0, vec![r(90.0), at(S::Created)], Nothing),
                (
                    101.0,
                    vec![r(90.0), r(80.0)],
                    Up("cpu 85% > target 50% for 101 s"),
                ),
            ],
        },
        Case {
            name: "an instance that died counts as one but carries no load",
            policy: (1, 3, Some(50), None),
            moments: vec![
                (0.0, vec![r(60.0), at(S::Dead)], Nothing),
                (30.0, vec![r(60.0), at(S::Dead)], Up("cpu 60% > target 50%")),
            ],
        },
        Case {
            name: "at max, nothing however high the use",
            policy: (1, 2, Some(50), None),
            moments: vec![
                (0.0, vec![r(99.0), r(99.0)], Nothing),
                (300.0, vec![r(99.0), r(99.0)], Nothing),
            ],
        },
        Case {
            name: "one fewer would do, for the down window: the highest number goes",
            policy: (1, 3, Some(50), None),
            moments: vec![
                (0.0, vec![r(10.0), r(10.0), r(10.0)], Nothing),
                (119.0, vec![r(10.0), r(10.0), r(10.0)], Nothing),
                (
                    120.0,
                    vec![r(10.0), r(10.0), r(10.0)],
                    Down(
                        2,
                        "cpu 10% over 3 instance(s), 15% over 2, < target 50% for 120 s",
                    ),
                ),
            ],
        },
        Case {
            name: "below the target, but one fewer would be above it: nothing (no flapping)",
            policy: (1, 3, Some(50), None),
            moments: vec![
                (0.0, vec![r(30.0), r(30.0)], Nothing),
                (500.0, vec![r(30.0), r(30.0)], Nothing),
            ],
        },
        Case {
            name: "a rise during the down window starts it again",
            policy: (1, 3, Some(50), None),
            moments: vec![
                (0.0, vec![r(5.0), r(5.0)], Nothing),
                (100.0, vec![r(40.0), r(40.0)], Nothing),
                (110.0, vec![r(5.0), r(5.0)], Nothing),
                (229.0, vec![r(5.0), r(5.0)], Nothing),
                (230.0, vec![r(5.0), r(5.0)], Down(1, "for 120 s")),
            ],
        },
        Case {
            name: "shrinking takes an instance that is not RUNNING first",
            policy: (1, 3, Some(50), None),
            moments: vec![
                (0.0, vec![r(1.0), at(S::Failed), r(1.0)], Nothing),
                (120.0, vec![r(1.0), at(S::Failed), r(1.0)], Down(1, "cpu")),
            ],
        },
        Case {
            name: "never below min",
            policy: (2, 3, Some(50), None),
            moments: vec![
                (0.0, vec![r(0.0), r(0.0)], Nothing),
                (1000.0, vec![r(0.0), r(0.0)], Nothing),
            ],
        },
        Case {
            name: "nothing running: no use to go by, nothing decided",
            policy: (1, 3, Some(50), None),
            moments: vec![
                (
                    0.0,
                    vec![at(S::Creating), at(S::NoActiveClusterWithCapacity)],
                    Nothing,
                ),
                (
                    500.0,
                    vec![at(S::Creating), at(S::NoActiveClusterWithCapacity)],
                    Nothing,
                ),
            ],
        },
        Case {
            name: "memory: a percentage of the service's memory",
            policy: (1, 3, None, Some(80)),
            moments: vec![
                (0.0, vec![(S::Running, 0.0, 90)], Nothing),
                (
                    30.0,
                    vec![(S::Running, 0.0, 90)],
                    Up("memory 90% > target 80% for 30 s"),
                ),
            ],
        },
        Case {
            name: "either target above grows; shrinking needs both below",
            policy: (1, 3, Some(50), Some(80)),
            moments: vec![
                // CPU is low, memory would be 100% over one instance: no shrink.
                (
                    0.0,
                    vec![(S::Running, 1.0, 50), (S::Running, 1.0, 50)],
                    Nothing,
                ),
                (
                    200.0,
                    vec![(S::Running, 1.0, 50), (S::Running, 1.0, 50)],
                    Nothing,
                ),
                (
                    201.0,
                    vec![(S::Running, 1.0, 30), (S::Running, 1.0, 30)],
                    Nothing,
                ),
                (
                    321.0,
                    vec![(S::Running, 1.0, 30), (S::Running, 1.0, 30)],
                    Down(1, "memory 30% over 2 instance(s), 60% over 1, < target 80%"),
                ),
            ],
        },
    ];
    for case in &cases {
        run(case);
    }
}

#[test]
fn a_refused_change_holds_everything_for_the_cooldown() {
    let policy = Autoscale {
        min: 2,
        max: 3,
        target_cpu_percent: Some(50),
        target_memory_percent: None,
        windows: Windows::default(),
    };
    let input = Input {
        policy: &policy,
        windows: windows(),
        memory_mb: 0,
        instances: vec![Sample {
            number: InstanceNumber(0),
            status: S::Running,
            cpu_percent: 0.0,
            memory_mb: 0,
        }],
    };
    let t0 = Instant::now();
    let (d, mut track) = step(&input, Track::default(), t0);
    assert!(matches!(d, Some(Step::Up { .. })), "{d:?}");
    track.refused(t0);
    let later = |s: u64| t0 + Duration::from_secs(s);
    let (d, track) = step(&input, track, later(59));
    assert_eq!(d, None, "below min, but refused a moment ago");
    let (d, _) = step(&input, track, later(60));
    assert!(matches!(d, Some(Step::Up { .. })), "tried again: {d:?}");
}

async fn count(root: &crate::control::Root, id: &canopy_core::ServiceId) -> usize {
    let s = root.service(&super::admin(), id.as_str()).await.unwrap();
    s.instances.len()
}

/// The service's autoscale events, oldest first.
async fn autoscaled(
    root: &crate::control::Root,
    id: &canopy_core::ServiceId,
) -> Vec<crate::model::ServiceEvent> {
    let events = root.service_events(&super::admin(), id.as_str()).await;
    let events = events.unwrap();
    events
        .into_iter()
        .filter(|e| e.what.starts_with("autoscale"))
        .collect()
}

/// The whole root on a paused clock: reported use grows an autoscaled service through the tick,
/// the lack of it shrinks it again, each change an event with its reason, and a restarted root
/// keeps the count.
#[tokio::test(start_paused = true)]
async fn reported_use_grows_and_shrinks_a_service_through_the_tick() {
    use super::{admin, cluster, report, root, service_with};
    use canopy_core::ClusterId;
    use canopy_core::link::{CommandAction, InstanceUsage};

    let dir = tempfile::tempdir().unwrap();
    let (root, _) = root(&dir).await;
    let a = cluster(&root, "a", 8).await;
    let policy = Autoscale {
        min: 1,
        max: 2,
        target_cpu_percent: Some(50),
        target_memory_percent: None,
        windows: Windows {
            up_secs: Some(2),
            down_secs: Some(4),
            cooldown_secs: Some(3),
        },
    };
    let id = service_with(&root, Some(policy)).await;
    // Reports every 500 ms (the test cluster's grace is 1 s) with `cpu` per instance, ticks.
    let seq = std::cell::Cell::new(0);
    let run = |cpu: &'static [f64], secs: u64| {
        let (root, a, id) = (&root, a.clone(), id.clone());
        let seq = &seq;
        async move {
            for _ in 0..secs * 2 {
                tokio::time::advance(Duration::from_millis(500)).await;
                let s = root.service(&admin(), id.as_str()).await.unwrap();
                for (n, i) in &s.instances {
                    if i.status != S::Running {
                        seq.set(seq.get() + 1);
                        let r = super::status_report(seq.get(), &id, n.0, S::Running);
                        root.instance_report(&a, r).await.unwrap();
                    }
                }
                let mut rep = report(8);
                rep.usage = s
                    .instances
                    .keys()
                    .zip(cpu)
                    .map(|(n, &cpu_percent)| InstanceUsage {
                        service_id: id.clone(),
                        instance: *n,
                        cpu_percent,
                        memory_mb: 0,
                        logs: String::new(),
                    })
                    .collect();
                root.cluster_report(&a, rep).await;
                root.tick().await.unwrap();
            }
        }
    };

    // Not deployed yet: the autoscaler leaves it alone.
    run(&[], 2).await;
    assert_eq!(count(&root, &id).await, 0);
    root.scale_up(&admin(), id.as_str()).await.unwrap();

    // Busy: a second instance after the up window, and no third (max 2).
    run(&[90.0, 90.0], 10).await;
    assert_eq!(count(&root, &id).await, 2);
    let events = autoscaled(&root, &id).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].what, "autoscale up");
    assert!(
        events[0].why.starts_with("cpu 90% > target 50% for 2 s"),
        "{events:#?}"
    );
    assert_eq!(
        events[0].outcome,
        format!("CLUSTER_SCHEDULED on cluster {a}")
    );
    assert_eq!(events[0].instance, Some(1));

    // Idle: back to one after the down window, and it stays there (min 1).
    run(&[1.0, 1.0], 15).await;
    assert_eq!(count(&root, &id).await, 1);
    let events = autoscaled(&root, &id).await;
    let whats: Vec<&str> = events.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(whats, ["autoscale up", "autoscale down"], "{events:#?}");
    assert!(
        events[1]
            .why
            .starts_with("cpu 1% over 2 instance(s), 2% over 1, < target 50% for 4 s"),
        "{events:#?}"
    );
    assert_eq!(events[1].instance, Some(1));
    let undeploys: Vec<(ClusterId, Option<InstanceNumber>)> = root
        .pending_commands()
        .await
        .into_iter()
        .filter_map(|p| match p.command.action {
            CommandAction::Undeploy { instance, .. } => Some((p.cluster_id, instance)),
            _ => None,
        })
        .collect();
    assert_eq!(undeploys, [(a.clone(), Some(InstanceNumber(1)))]);

    // A restarted root has the count it acknowledged, and changes nothing by itself.
    drop(root);
    let (root, _) = super::root(&dir).await;
    root.cluster_report(&a, report(8)).await;
    root.tick().await.unwrap();
    assert_eq!(count(&root, &id).await, 1);
    assert_eq!(autoscaled(&root, &id).await.len(), 2);
}
