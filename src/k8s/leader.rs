//! Leader election on a `coordination.k8s.io` Lease, as client-go's
//! leaderelection does it: the leader renews the Lease every retry period; a
//! candidate takes it over only once it has seen the same holder and renew
//! time unchanged for a whole lease duration (measured on its own clock, so
//! clock skew between replicas does not matter); a leader that could not
//! renew for the renew deadline (shorter than the lease duration) stops
//! leading before anyone else may start. Leadership is published as the
//! moment it ends unless renewed (`valid_until`): the controller checks it
//! before every change it makes, so a leader whose renewals hang stops
//! acting at the renew deadline whatever its calls do; every call of the
//! elector is also bounded by the renew deadline.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

use super::api::{call, ApiHealth, Call, KubeError};

/// Where and how to elect (the `--leader-election*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderSpec {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease unrenewed stays its holder's.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl LeaderSpec {
    /// Why these durations cannot keep a single leader, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "--leader-election-renew-deadline ({}) must be shorter than --leader-election-lease-duration ({}): a leader that cannot renew must stop before another may start",
                crate::text::duration(&self.renew_deadline),
                crate::text::duration(&self.lease_duration)
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(format!(
                "--leader-election-retry-period ({}) must be shorter than --leader-election-renew-deadline ({})",
                crate::text::duration(&self.retry_period),
                crate::text::duration(&self.renew_deadline)
            ));
        }
        Ok(())
    }
}

/// One replica's view of the election.
pub struct Elector {
    api: Api<Lease>,
    spec: LeaderSpec,
    health: Arc<ApiHealth>,
    timeout: Duration,
    /// The holder and renew time last seen, and when (on our clock).
    seen: Option<(Option<String>, Option<MicroTime>, Instant)>,
    /// When this replica last renewed as leader.
    renewed: Option<Instant>,
}

impl Elector {
    /// An elector for `spec`; each API call bounded by `timeout`, and by
    /// the renew deadline if that is shorter.
    pub fn new(
        client: Client,
        spec: LeaderSpec,
        health: Arc<ApiHealth>,
        timeout: Duration,
    ) -> Self {
        Elector {
            api: Api::namespaced(client, &spec.namespace),
            timeout: timeout.min(spec.renew_deadline),
            spec,
            health,
            seen: None,
            renewed: None,
        }
    }

    /// Tries to acquire or renew until `stop` fires, publishing until when
    /// this replica leads (`None`: it does not); gives the Lease up on the
    /// way out if it led. `stop` comes from the controller once its last
    /// pass has ended, so nothing of this replica acts after the release.
    pub async fn run(
        mut self,
        valid: watch::Sender<Option<Instant>>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            self.step().await;
            // Leading until the last renewal's start plus the renew deadline.
            valid.send_replace(self.renewed.map(|r| r + self.spec.renew_deadline));
            tokio::select! {
                _ = tokio::time::sleep(self.spec.retry_period) => {}
                _ = stop.changed() => break,
            }
        }
        if valid.send_replace(None).is_some() {
            if let Err(e) = self.release().await {
                tracing::warn!(error = %e, "could not give the leader Lease up; the other replica takes over after the lease duration");
            }
        }
    }

    /// One attempt: `renewed` is when the last successful one began, or
    /// `None` once this replica may no longer lead.
    async fn step(&mut self) {
        let started = Instant::now();
        match self.try_lead().await {
            Ok(true) => self.renewed = Some(started),
            Ok(false) => self.renewed = None,
            Err(e) => {
                let Some(at) = self.renewed else {
                    tracing::warn!(error = %e, "leader election");
                    return;
                };
                let keep = at.elapsed() < self.spec.renew_deadline;
                tracing::warn!(error = %e, still_leading = keep, "could not renew the leader Lease");
                if !keep {
                    self.renewed = None;
                }
            }
        }
    }

    async fn try_lead(&mut self) -> Result<bool, KubeError> {
        let name = self.spec.name.clone();
        let got = call(
            &self.health,
            self.timeout,
            Call::GetLeaderLease,
            self.api.get_opt(&name),
        )
        .await?;
        let now = MicroTime(
            k8s_openapi::jiff::Timestamp::try_from(SystemTime::now()).unwrap_or_default(),
        );
        let Some(mut lease) = got else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    ..ObjectMeta::default()
                },
                spec: Some(self.held(now, None)),
            };
            let pp = PostParams::default();
            let made = self.api.create(&pp, &lease);
            return conflict_is_no(
                call(&self.health, self.timeout, Call::CreateLeaderLease, made).await,
            );
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let key = (spec.holder_identity.clone(), spec.renew_time.clone());
        if self.seen.as_ref().map(|(h, r, _)| (h, r)) != Some((&key.0, &key.1)) {
            self.seen = Some((key.0.clone(), key.1.clone(), Instant::now()));
        }
        let ours = spec.holder_identity.as_deref() == Some(self.spec.identity.as_str());
        let held_by_other = spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty())
            && !ours;
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.spec.lease_duration, Duration::from_secs);
        let unchanged_for = self
            .seen
            .as_ref()
            .map_or(Duration::ZERO, |(_, _, at)| at.elapsed());
        if held_by_other && unchanged_for < duration {
            return Ok(false);
        }
        lease.spec = Some(self.held(now, Some(&spec)));
        let pp = PostParams::default();
        let put = self.api.replace(&self.spec.name, &pp, &lease);
        conflict_is_no(call(&self.health, self.timeout, Call::UpdateLeaderLease, put).await)
    }

    /// The Lease's spec with this replica holding it at `now`.
    fn held(&self, now: MicroTime, before: Option<&LeaseSpec>) -> LeaseSpec {
        let ours =
            before.and_then(|b| b.holder_identity.as_deref()) == Some(self.spec.identity.as_str());
        let transitions = before.and_then(|b| b.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.spec.identity.clone()),
            lease_duration_seconds: i32::try_from(self.spec.lease_duration.as_secs()).ok(),
            acquire_time: if ours {
                before.and_then(|b| b.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours || before.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }
    }

    /// Clears the holder, so the other replica takes over at its next try.
    async fn release(&mut self) -> Result<(), KubeError> {
        let got = call(
            &self.health,
            self.timeout,
            Call::GetLeaderLease,
            self.api.get_opt(&self.spec.name),
        )
        .await?;
        let Some(mut lease) = got else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.spec.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        let pp = PostParams::default();
        let put = self.api.replace(&self.spec.name, &pp, &lease);
        call(&self.health, self.timeout, Call::UpdateLeaderLease, put)
            .await
            .map(|_| ())
    }
}

/// A 409 (someone else wrote first) is a lost round, not an error.
fn conflict_is_no<T>(r: Result<T, KubeError>) -> Result<bool, KubeError> {
    match r {
        Ok(_) => Ok(true),
        Err(KubeError::Api { code: 409, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
