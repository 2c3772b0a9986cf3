//! The job document: a service as `GET /api/service(s)` shows it ([`canopy_api::ServiceView`]'s shape, as
//! Oakestra's), written straight from the root's model. A full list holds every instance of
//! every service (tens of thousands), so each instance's part is kept once written, with the
//! instance's [`Stamp`](crate::model::Stamp) then, and written again when the instance carries
//! another: the root's state stamps every instance it changes. [`keep_current`] writes what
//! changed once a second, so a list finds its parts written (the first list after a burst
//! would otherwise write tens of thousands while it holds the root's state).

use crate::control::{Caller, Root};
use crate::model::{Instance, Service};
use canopy_core::{InstanceNumber, JobName};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};

/// A service's documents are dropped when this many lists were written without it (a
/// deleted service, or one nobody lists any more).
const KEPT_FOR_PASSES: u64 = 64;

/// The instances' written parts, by service id.
#[derive(Default)]
pub struct JobDocs {
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// Lists written so far.
    pass: u64,
    services: HashMap<String, Written>,
}

/// One service's instances as last written, in instance order.
#[derive(Default)]
struct Written {
    pass: u64,
    instances: Vec<Part>,
}

/// One instance's part of the document, and what it was written from.
struct Part {
    number: InstanceNumber,
    stamp: u64,
    json: Box<RawValue>,
}

impl Part {
    fn new(i: &Instance) -> Part {
        let json = serde_json::value::to_raw_value(&InstanceFields::of(i))
            .expect("an instance's fields are always JSON");
        Part {
            number: i.number,
            stamp: i.stamp.0,
            json,
        }
    }
}

impl Written {
    /// Brings the parts in line with `s`'s instances.
    fn refresh(&mut self, s: &Service) {
        let same_numbers = self.instances.len() == s.instances.len()
            && self
                .instances
                .iter()
                .zip(s.instances.keys())
                .all(|(p, n)| p.number == *n);
        if !same_numbers {
            let mut old: BTreeMap<InstanceNumber, Part> = std::mem::take(&mut self.instances)
                .into_iter()
                .map(|p| (p.number, p))
                .collect();
            self.instances = s
                .instances
                .values()
                .map(|i| old.remove(&i.number).unwrap_or_else(|| Part::new(i)))
                .collect();
        }
        for (p, i) in self.instances.iter_mut().zip(s.instances.values()) {
            if p.stamp != i.stamp.0 {
                *p = Part::new(i);
            }
        }
    }
}

impl Cache {
    /// Brings the parts of `list`'s services up to date; forgets services not seen for
    /// [`KEPT_FOR_PASSES`] passes.
    fn refresh(&mut self, list: &[&Service]) {
        self.pass += 1;
        let pass = self.pass;
        for s in list {
            let w = self.services.entry(s.id.clone()).or_default();
            w.pass = pass;
            w.refresh(s);
        }
        self.services.retain(|_, w| pass - w.pass < KEPT_FOR_PASSES);
    }
}

impl JobDocs {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the parts of `list`'s instances that changed, and nothing else.
    pub fn refresh(&self, list: &[&Service]) {
        self.cache().refresh(list);
    }

    /// `list` as a JSON array of job documents.
    pub fn list(&self, list: &[&Service]) -> Vec<u8> {
        let mut cache = self.cache();
        cache.refresh(list);
        let size: usize = list
            .iter()
            .map(|s| {
                let parts = cache.services.get(&s.id).map_or(&[][..], |w| &w.instances);
                1024 + parts.iter().map(|p| p.json.get().len() + 1).sum::<usize>()
            })
            .sum();
        let mut out = Vec::with_capacity(size);
        out.push(b'[');
        for (n, s) in list.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            let parts = cache.services.get(&s.id).map_or(&[][..], |w| &w.instances);
            write_doc(&mut out, s, parts);
        }
        out.push(b']');
        out
    }

    /// One service's job document.
    pub fn one(&self, s: &Service) -> Vec<u8> {
        let mut out = self.list(&[s]);
        // The list's brackets off.
        out.pop();
        out.remove(0);
        out
    }
}

/// Every service's parts brought up to date once a second until `stop`.
pub async fn keep_current(root: Arc<Root>, docs: Arc<JobDocs>, stop: impl Future<Output = ()>) {
    let everyone = Caller {
        name: String::new(),
        admin: true,
        organization: String::new(),
    };
    canopy_daemon::every(REFRESH, stop, || async {
        let _ = root.services(&everyone, None, |l| docs.refresh(l)).await;
    })
    .await
}

/// How often [`keep_current`] writes what changed.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

fn write_doc(out: &mut Vec<u8>, s: &Service, parts: &[Part]) {
    let (status, detail) = s.status();
    let j = &s.spec.job_name;
    let doc = ServiceFields {
        _id: OidRef { oid: &s.id },
        microserviceID: &s.id,
        applicationID: &s.application_id,
        job_name: j,
        app_name: j.app(),
        app_ns: j.app_namespace(),
        service_name: j.service(),
        service_ns: j.service_namespace(),
        image: &s.spec.code,
        RR_ip: s.rr_ip,
        next_instance_progressive_number: s.next_instance,
        status: status.as_str(),
        status_detail: detail,
        instance_list: Parts(parts),
        sla: SlaRest(&s.sla),
    };
    serde_json::to_writer(out, &doc).expect("a job document is always JSON");
}

/// The fields of [`canopy_api::ServiceView`], borrowed.
#[derive(Serialize)]
#[allow(non_snake_case)]
struct ServiceFields<'a> {
    _id: OidRef<'a>,
    microserviceID: &'a str,
    applicationID: &'a str,
    #[serde(serialize_with = "as_display")]
    job_name: &'a JobName,
    app_name: &'a str,
    app_ns: &'a str,
    service_name: &'a str,
    service_ns: &'a str,
    image: &'a str,
    RR_ip: Ipv4Addr,
    next_instance_progressive_number: u32,
    status: &'static str,
    status_detail: &'a str,
    instance_list: Parts<'a>,
    #[serde(flatten)]
    sla: SlaRest<'a>,
}

/// `{"$oid": "..."}`, borrowed.
#[derive(Serialize)]
struct OidRef<'a> {
    #[serde(rename = "$oid")]
    oid: &'a str,
}

/// The fields of [`canopy_api::InstanceView`], borrowed.
#[derive(Serialize)]
struct InstanceFields<'a> {
    instance_number: u32,
    status: &'static str,
    status_detail: &'a str,
    cluster_id: Option<&'a str>,
    worker_id: Option<&'a str>,
    instance_ip: Ipv4Addr,
    cpu_percent: f64,
    memory: u64,
    logs: &'a str,
    last_modified_timestamp: f64,
    revision: u32,
    ready: bool,
}

impl<'a> InstanceFields<'a> {
    fn of(i: &'a Instance) -> Self {
        InstanceFields {
            instance_number: i.number.0,
            status: i.status.as_str(),
            status_detail: &i.detail,
            cluster_id: i.cluster_id.as_ref().map(|c| c.as_str()),
            worker_id: i.node_id.as_ref().map(|n| n.as_str()),
            instance_ip: i.ip,
            cpu_percent: i.cpu_percent,
            memory: i.memory_mb,
            logs: &i.logs,
            last_modified_timestamp: i.updated_at,
            revision: i.revision,
            ready: i.ready,
        }
    }
}

/// The instances' written parts, as a JSON array.
struct Parts<'a>(&'a [Part]);

impl Serialize for Parts<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(self.0.iter().map(|p| &*p.json))
    }
}

/// The SLA's microservice as submitted, less the fields the job document sets itself.
struct SlaRest<'a>(&'a serde_json::Value);

const SET_BY_THE_JOB: [&str; 5] = ["microserviceID", "applicationID", "status", "image", "_id"];

impl Serialize for SlaRest<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let fields = self.0.as_object().into_iter().flatten();
        ser.collect_map(fields.filter(|(k, _)| !SET_BY_THE_JOB.contains(&k.as_str())))
    }
}

fn as_display<S: Serializer>(v: &impl std::fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Stamp;
    use canopy_api::ServiceView;
    use canopy_core::{ClusterId, InstanceStatus, NodeId, ServiceSpec};

    fn service() -> Service {
        let mut placed = Instance::new(InstanceNumber(0), Ipv4Addr::new(10, 30, 0, 2), 12.5);
        placed.status = InstanceStatus::Running;
        placed.cluster_id = Some(ClusterId::parse("c1").unwrap());
        placed.node_id = Some(NodeId::parse("w1").unwrap());
        placed.cpu_percent = 3.5;
        placed.memory_mb = 64;
        placed.logs = "hello \"world\"\n".into();
        placed.revision = 2;
        let mut waiting = Instance::new(InstanceNumber(1), Ipv4Addr::new(10, 30, 0, 3), 13.0);
        waiting.status = InstanceStatus::NoActiveClusterWithCapacity;
        waiting.detail = "no cluster has room".into();
        waiting.ready = false;
        Service {
            id: "svc1".into(),
            application_id: "app1".into(),
            owner: "u".into(),
            sla: serde_json::json!({
                "microserviceID": "ignored", "image": "ignored", "status": "ignored",
                "microservice_name": "web", "vcpus": 1, "port": "80:80",
            }),
            spec: ServiceSpec::new(
                "clientsrvr.test.web.test".parse().unwrap(),
                canopy_core::Virtualization::Container,
                "docker.io/library/nginx:latest",
            ),
            rr_ip: Ipv4Addr::new(10, 30, 55, 55),
            next_instance: 2,
            revision: 2,
            rollout: None,
            autoscale: None,
            instances: [(InstanceNumber(0), placed), (InstanceNumber(1), waiting)].into(),
        }
    }

    fn read(bytes: &[u8]) -> Vec<ServiceView> {
        serde_json::from_slice(bytes).expect("a list of job documents")
    }

    /// The job document is what the API's [`ServiceView`] (the CLI's type) reads, field by
    /// field.
    #[test]
    fn a_job_document_reads_back_as_the_api_view() {
        let s = service();
        let docs = JobDocs::default();
        let one: ServiceView = serde_json::from_slice(&docs.one(&s)).unwrap();
        let [v] = &read(&docs.list(&[&s]))[..] else {
            panic!("one service expected");
        };
        assert_eq!(
            serde_json::to_value(v).unwrap(),
            serde_json::to_value(&one).unwrap()
        );
        assert_eq!(v._id.oid, "svc1");
        assert_eq!(v.microserviceID, "svc1");
        assert_eq!(v.applicationID, "app1");
        assert_eq!(v.job_name, "clientsrvr.test.web.test");
        assert_eq!(
            (&*v.app_name, &*v.app_ns, &*v.service_name, &*v.service_ns),
            ("clientsrvr", "test", "web", "test")
        );
        assert_eq!(v.image, "docker.io/library/nginx:latest");
        assert_eq!(v.RR_ip, "10.30.55.55");
        assert_eq!(v.next_instance_progressive_number, 2);
        assert_eq!(v.status, "NoActiveClusterWithCapacity");
        assert_eq!(v.status_detail, "no cluster has room");
        // The SLA as submitted (in its order), less what the job document sets itself.
        let sla: Vec<&str> = v.sla.keys().map(String::as_str).collect();
        assert_eq!(sla, ["microservice_name", "vcpus", "port"]);
        let [a, b] = &v.instance_list[..] else {
            panic!("two instances expected");
        };
        assert_eq!(a.instance_number, 0);
        assert_eq!(a.status, "RUNNING");
        assert_eq!(a.cluster_id.as_deref(), Some("c1"));
        assert_eq!(a.worker_id.as_deref(), Some("w1"));
        assert_eq!(a.instance_ip, "10.30.0.2");
        assert_eq!((a.cpu_percent, a.memory), (3.5, 64));
        assert_eq!(a.logs, "hello \"world\"\n");
        assert_eq!(
            (a.last_modified_timestamp, a.revision, a.ready),
            (12.5, 2, true)
        );
        assert_eq!(b.status, "NoActiveClusterWithCapacity");
        assert_eq!(b.status_detail, "no cluster has room");
        assert_eq!(
            (b.cluster_id.as_deref(), b.worker_id.as_deref()),
            (None, None)
        );
        assert!(!b.ready);
    }

    /// What changed since the last list shows in the next, however it changed.
    #[test]
    fn every_change_of_an_instance_shows_in_the_next_list() {
        let mut s = service();
        let docs = JobDocs::default();
        let numbers = |l: &[ServiceView]| -> Vec<u32> {
            l[0].instance_list
                .iter()
                .map(|i| i.instance_number)
                .collect()
        };
        assert_eq!(numbers(&read(&docs.list(&[&s]))), [0, 1]);
        // Changed in place and stamped (as the clusters' live figures are).
        let i = s.instances.get_mut(&InstanceNumber(0)).unwrap();
        i.cpu_percent = 97.0;
        i.logs = "next".into();
        i.stamp = Stamp(1);
        let l = read(&docs.list(&[&s]));
        assert_eq!(l[0].instance_list[0].cpu_percent, 97.0);
        assert_eq!(l[0].instance_list[0].logs, "next");
        // Replaced, added, removed.
        let mut moved = s.instances[&InstanceNumber(1)].clone();
        moved.status = InstanceStatus::Running;
        moved.detail.clear();
        moved.stamp = Stamp(2);
        s.instances.insert(InstanceNumber(1), moved);
        let added = Instance::new(InstanceNumber(5), Ipv4Addr::new(10, 30, 0, 9), 14.0);
        s.instances.insert(InstanceNumber(5), added);
        s.instances.remove(&InstanceNumber(0));
        let l = read(&docs.list(&[&s]));
        assert_eq!(numbers(&l), [1, 5]);
        assert_eq!(l[0].instance_list[0].status, "RUNNING");
        assert_eq!(l[0].instance_list[1].instance_ip, "10.30.0.9");
        assert_eq!(l[0].status, "REQUESTED");
        // What a refresh wrote is what a list shows.
        s.instances.get_mut(&InstanceNumber(5)).unwrap().status = InstanceStatus::Failed;
        s.instances.get_mut(&InstanceNumber(5)).unwrap().stamp = Stamp(3);
        docs.refresh(&[&s]);
        let l = read(&docs.list(&[&s]));
        assert_eq!(l[0].instance_list[1].status, "FAILED");
        // And nothing of a service listed no more stays for long.
        let mut other = service();
        other.id = "svc2".into();
        for _ in 0..KEPT_FOR_PASSES {
            assert_eq!(read(&docs.list(&[&other])).len(), 1);
        }
        let kept: Vec<String> = docs
            .cache
            .lock()
            .unwrap()
            .services
            .keys()
            .cloned()
            .collect();
        assert_eq!(kept, ["svc2"]);
    }
}
