//! Instances: their lifecycle (every change goes through [`crate::lifecycle::transition`]),
//! what workers report about them, and the root's deploy/undeploy commands.

use super::state::{Change, InstanceKey};
use super::{Cluster, Effect, Publish, Result, logged};
use crate::lifecycle::{self, Event, Next};
use crate::model::{Instance, Service, collections as col, report_key};
use canopy_core::link::{Command, CommandAction};
use canopy_core::{InstanceNumber, InstanceStatus, JobName, NodeId, ServiceId};
use canopy_proto::worker::{DeleteMessage, JobStatusEvent, topics};

/// One instance's use as its worker reports it (`nodes/<id>/jobs/resources`).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    /// The job name as the worker sent it (it may name no job here; a delete echoes it back).
    pub job: String,
    pub instance: InstanceNumber,
    pub cpu_percent: f64,
    pub memory_mb: u64,
    pub logs: String,
}

/// Whom a worker's report on an instance is about.
#[derive(Debug, Clone, PartialEq)]
enum Ownership {
    /// An instance the cluster placed on that worker.
    Ours(InstanceKey),
    /// A copy the worker should not hold (failover, undeploy while away); the service if the
    /// job is known here.
    Stray(Option<ServiceId>),
}

/// Whether the instance `job`/`n` that `node` reports on is one the cluster placed there.
fn owned_by(ch: &Change, node: &NodeId, job: Option<&JobName>, n: InstanceNumber) -> Ownership {
    let service = job.and_then(|j| ch.jobs.get(j)).cloned();
    match service {
        Some(service) => {
            let k = InstanceKey { service, number: n };
            if ch
                .instances
                .get(&k)
                .is_some_and(|i| i.node.as_ref() == Some(node))
            {
                Ownership::Ours(k)
            } else {
                Ownership::Stray(Some(k.service))
            }
        }
        None => Ownership::Stray(None),
    }
}

/// Stages telling `node` to delete a copy it should not hold, unless the copy is already
/// gone by the worker's own account.
fn delete_stray(
    ch: &mut Change,
    node: &NodeId,
    service: Option<&ServiceId>,
    job: &str,
    n: InstanceNumber,
    status: InstanceStatus,
) {
    if matches!(
        status,
        InstanceStatus::Undeployed | InstanceStatus::Dead | InstanceStatus::Failed
    ) {
        return;
    }
    tracing::info!(node = %node, job, instance = n.0, "worker holds a copy it should not; deleting it");
    stage_delete(ch, node, service, job, n);
}

/// The delete message telling `node` to stop and remove instance `n` of `job`.
fn delete_message(
    node: &NodeId,
    service: Option<&ServiceId>,
    job: &str,
    n: InstanceNumber,
) -> Option<Publish> {
    let body = DeleteMessage {
        id: service.map(ToString::to_string).unwrap_or_default(),
        job_name: job.to_owned(),
        virtualization: String::new(),
        instance_number: n.0,
    };
    match serde_json::to_vec(&body) {
        Ok(payload) => Some(Publish {
            topic: topics::delete(node),
            payload,
        }),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a delete message");
            None
        }
    }
}

/// Stages a delete message: `node` stops and removes instance `n` of `job`.
fn stage_delete(
    ch: &mut Change,
    node: &NodeId,
    service: Option<&ServiceId>,
    job: &str,
    n: InstanceNumber,
) {
    if let Some(p) = delete_message(node, service, job, n) {
        ch.tx.effect(Effect::Publish(p));
    }
}

/// The job name of service `service`, as the change knows it.
fn job_of(ch: &Change, service: &ServiceId) -> String {
    ch.services
        .get(service)
        .map(|s| s.spec.job_name.to_string())
        .unwrap_or_default()
}

/// Stages telling `node` to stop and remove instance `k`.
fn tell_delete(ch: &mut Change, node: &NodeId, k: &InstanceKey) {
    let job = job_of(ch, &k.service);
    stage_delete(ch, node, Some(&k.service), &job, k.number);
}

impl Cluster {
    pub async fn instances(&self) -> Vec<Instance> {
        self.state
            .lock()
            .await
            .instances
            .values()
            .cloned()
            .collect()
    }

    /// A message from `node` about its instances: the worker was heard from, then the change
    /// the message brings is staged and committed. Messages from unknown nodes are dropped.
    async fn worker_message(
        &self,
        node: &NodeId,
        stage: impl FnOnce(&mut Change<'_>) -> Result<()>,
    ) {
        let mut st = self.state.lock().await;
        let now = self.now();
        if st.heard_from(node, now.at).is_none() {
            return;
        }
        logged(self.change(&mut st, now, stage).await);
    }

    /// `nodes/<id>/job`: an instance on the worker changed state.
    pub async fn on_job_status(&self, node: &NodeId, ev: JobStatusEvent) {
        self.on_job_statuses(vec![(node.clone(), ev)]).await;
    }

    /// Job statuses as they arrived, from any workers, staged in order and committed as one
    /// change (then waiting instances are placed once). Statuses from unknown nodes are
    /// dropped.
    pub async fn on_job_statuses(&self, statuses: Vec<(NodeId, JobStatusEvent)>) {
        let mut st = self.state.lock().await;
        let now = self.now();
        let statuses: Vec<(NodeId, JobStatusEvent)> = statuses
            .into_iter()
            .filter(|(node, _)| st.heard_from(node, now.at).is_some())
            .collect();
        if statuses.is_empty() {
            return;
        }
        let result = self
            .change(&mut st, now, |ch| {
                for (node, ev) in statuses {
                    self.stage_job_status(ch, &node, ev);
                }
                self.place_waiting(ch);
                Ok(())
            })
            .await;
        logged(result);
    }

    /// Stages what one job status says (an error is logged: the other statuses go on).
    fn stage_job_status(&self, ch: &mut Change, node: &NodeId, ev: JobStatusEvent) {
        match owned_by(ch, node, Some(&ev.job), ev.instance) {
            Ownership::Ours(k) => {
                let mut before = None;
                if let Some(i) = ch.instances.get_mut(&k) {
                    if let Some(ip) = ev.ns_ip {
                        i.ns_ip = Some(ip);
                    }
                    before = Some((i.status, i.ready));
                    i.ready = ev.ready;
                }
                let event = Event::Reported(ev.status);
                if let Err(e) = self.apply(ch, &k, event, Some(ev.detail)) {
                    tracing::error!(error = %e, "cannot record a job status");
                }
                // Only readiness changed: the status report did not go up, so this one
                // does (the overlay view follows every change anyway).
                let now = ch.instances.get(&k).map(|i| (i.status, i.ready));
                if let (Some((status, was)), Some((status_now, ready))) = (before, now)
                    && status == status_now
                    && was != ready
                    && let Err(e) = store_instance(ch, &k).and_then(|()| self.report(ch, &k))
                {
                    tracing::error!(error = %e, "cannot record a readiness change");
                }
            }
            Ownership::Stray(service) => {
                let job = ev.job.to_string();
                delete_stray(ch, node, service.as_ref(), &job, ev.instance, ev.status);
            }
        }
    }

    /// `nodes/<id>/jobs/resources`: the worker's running instances and their use.
    pub async fn on_resources(&self, node: &NodeId, usage: Vec<UsageReport>) {
        self.worker_message(node, |ch| {
            for r in usage {
                let job: Option<JobName> = r.job.parse().ok();
                let k = match owned_by(ch, node, job.as_ref(), r.instance) {
                    Ownership::Ours(k) => k,
                    Ownership::Stray(service) => {
                        let running = InstanceStatus::Running;
                        delete_stray(ch, node, service.as_ref(), &r.job, r.instance, running);
                        continue;
                    }
                };
                let Some(i) = ch.instances.get_mut(&k) else {
                    continue;
                };
                i.cpu_percent = r.cpu_percent;
                i.memory_mb = r.memory_mb;
                i.logs = tail(&r.logs, 1024);
                // A resource report means the instance runs (Oakestra's rule).
                if matches!(
                    i.status,
                    InstanceStatus::NodeScheduled
                        | InstanceStatus::Creating
                        | InstanceStatus::Created
                ) && let Err(e) =
                    self.apply(ch, &k, Event::Reported(InstanceStatus::Running), None)
                {
                    tracing::error!(error = %e, "cannot record a resource report");
                }
            }
            Ok(())
        })
        .await;
    }

    /// Stages one lifecycle event of an instance and what the transition says to do.
    pub(super) fn apply(
        &self,
        ch: &mut Change,
        k: &InstanceKey,
        event: Event,
        detail: Option<String>,
    ) -> Result<()> {
        let Some(i) = ch.instances.get(k) else {
            return Ok(());
        };
        let Some(t) = lifecycle::transition(i.status, &event, i.restarts) else {
            return Ok(());
        };
        let old_node = i.node.clone();
        // A copy placed anew is not ready until its worker says so.
        let fresh_ready =
            super::placement::spec_of(ch, i).is_none_or(|s| s.readiness_probe.is_none());
        let now = ch.now.unix;
        let Some(i) = ch.instances.get_mut(k) else {
            return Ok(());
        };
        let changed = i.status != t.status;
        if t.status == InstanceStatus::Running && i.status != InstanceStatus::Running {
            i.running_since = now;
        }
        i.status = t.status;
        if let Some(d) = detail {
            i.detail = d;
        } else if changed {
            i.detail.clear();
        }
        i.updated_at = now;
        match t.next {
            Next::PlaceAfter(_) => {
                if i.running_since > 0.0
                    && now - i.running_since >= lifecycle::STABLE_AFTER.as_secs_f64()
                {
                    i.restarts = 0;
                }
                i.retry_at = now + lifecycle::backoff(i.restarts).as_secs_f64();
                i.restarts = i.restarts.saturating_add(1);
                i.running_since = 0.0;
                i.node = None;
                i.ns_ip = None;
                i.ready = fresh_ready;
                self.metrics.reschedule();
            }
            Next::PlaceNow => {
                i.retry_at = 0.0;
                i.running_since = 0.0;
                i.node = None;
                i.ns_ip = None;
                i.ready = fresh_ready;
                self.metrics.reschedule();
            }
            Next::Wait | Next::PlaceWhenPossible => {}
        }
        if t.delete_on_worker
            && let Some(node) = &old_node
            && ch.workers.get(node).is_some_and(|w| w.online)
        {
            tell_delete(ch, node, k);
        }
        store_instance(ch, k)?;
        if changed {
            self.report(ch, k)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ root commands

    /// Applies a command from the root. Idempotent: a deploy of an instance the cluster already
    /// has, or an undeploy of one it does not, changes nothing.
    pub async fn apply_command(&self, cmd: &Command) -> Result<()> {
        self.apply_commands(std::slice::from_ref(cmd)).await
    }

    /// Applies commands from the root in order, as one change (one commit; its result is
    /// every command's), then places the new instances.
    pub async fn apply_commands(&self, cmds: &[Command]) -> Result<()> {
        for cmd in cmds {
            if let CommandAction::Deploy {
                service_id,
                instance,
                ..
            } = &cmd.action
            {
                self.end_drain(&InstanceKey {
                    service: service_id.clone(),
                    number: *instance,
                });
            }
        }
        let mut st = self.state.lock().await;
        let now = self.now();
        self.change(&mut st, now, |ch| {
            let mut added = false;
            for cmd in cmds {
                added |= self.stage_command(ch, cmd)?;
            }
            if added {
                self.place_waiting(ch);
            }
            Ok(())
        })
        .await
    }

    /// Stages one command; `true` if it added an instance (to be placed).
    fn stage_command(&self, ch: &mut Change, cmd: &Command) -> Result<bool> {
        match &cmd.action {
            CommandAction::Deploy {
                service_id,
                instance,
                spec,
                instance_ip,
            } => {
                let service = Service {
                    id: service_id.clone(),
                    spec: (**spec).clone(),
                };
                if ch.services.get(service_id) != Some(&service) {
                    ch.tx.put(col::SERVICES, service_id.as_str(), &service)?;
                    ch.jobs
                        .insert(service.spec.job_name.clone(), service_id.clone());
                    ch.services.insert(service_id.clone(), service);
                }
                let k = InstanceKey {
                    service: service_id.clone(),
                    number: *instance,
                };
                if ch.instances.contains_key(&k) {
                    return Ok(false);
                }
                let mut i = Instance::new(service_id.clone(), *instance, *instance_ip, ch.now.unix);
                // Its own: a later deploy of another revision changes the service's.
                i.spec = Some(spec.clone());
                i.ready = spec.readiness_probe.is_none();
                ch.instances.insert(k.clone(), i);
                store_instance(ch, &k)?;
                self.report(ch, &k)?;
                Ok(true)
            }
            CommandAction::Undeploy {
                service_id,
                instance,
            } => {
                let keys: Vec<InstanceKey> = ch
                    .instances
                    .keys()
                    .filter(|k| &k.service == service_id && instance.is_none_or(|n| n == k.number))
                    .cloned()
                    .collect();
                for k in keys {
                    remove_instance(ch, &k);
                }
                let left = ch.instances.keys().any(|k| &k.service == service_id);
                if !left && let Some(s) = ch.services.remove(service_id) {
                    ch.jobs.remove(&s.spec.job_name);
                    ch.tx.delete(col::SERVICES, service_id.as_str());
                }
                Ok(false)
            }
        }
    }
}

/// Stages the store write of instance `k` as the change leaves it.
fn store_instance(ch: &mut Change, k: &InstanceKey) -> Result<()> {
    if let Some(i) = ch.instances.get(k) {
        ch.tx.put(col::INSTANCES, &i.key(), i)?;
    }
    Ok(())
}

/// Stages the removal of instance `k`, its pending report, and its copy on its worker.
fn remove_instance(ch: &mut Change, k: &InstanceKey) {
    let Some(i) = ch.instances.remove(k) else {
        return;
    };
    ch.tx.delete(col::INSTANCES, &k.store_key());
    if let Some(seq) = ch.outbox_by_instance.remove(k) {
        ch.outbox.remove(&seq);
        ch.tx.delete(col::REPORTS, &report_key(seq));
    }
    let Some(node) = &i.node else {
        return;
    };
    if i.status == InstanceStatus::Running && i.ns_ip.is_some() {
        // On the overlay: it leaves its service's addresses with this change, and is
        // stopped after the drain time, so requests on their way to it are still answered.
        let job = job_of(ch, &k.service);
        if let Some(publish) = delete_message(node, Some(&k.service), &job, k.number) {
            ch.tx.effect(Effect::Drain {
                key: k.clone(),
                publish,
            });
        }
        return;
    }
    tell_delete(ch, node, k);
}

/// The last `max` bytes of `s` (at a character boundary).
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}
