//! A pool of upstream endpoints: picks one per attempt (power of two choices on peak-EWMA cost), retries failed
//! attempts elsewhere within a budget and the request's time, and keeps the endpoint set fresh in the background
//! (DNS re-resolution, active health checks, metadata verification of new endpoints).

use super::budget::RetryBudget;
use super::endpoint::{Endpoint, OUTCOMES};
use super::error::{AttemptError, UpstreamError};
use super::transport::{self, EndpointClient, HttpClient, Prepared};
use crate::backend::{ModelSignature, RawAnswer, RawInfer};
use crate::config::{DeclaredSignature, UpstreamConfig};
use crate::metrics::{catalogue, Metrics};
use crate::protocol::json::DecodeLimits;
use crate::protocol::NamedTensor;
use crate::tensor::Tensor;
use ::metrics::Counter;
use parking_lot::RwLock;
use rand::Rng;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// A model as the pool's endpoints serve it.
#[derive(Debug)]
pub struct RemoteModelSpec {
    pub name: String,
    /// The upstream version requests are sent to (`None`: the upstream's default).
    pub version: Option<String>,
    pub signature: ModelSignature,
    /// Running a request twice is harmless, so attempts that may have reached an upstream can be retried.
    pub idempotent: bool,
    /// The V2 HTTP inference path of `name` and `version`, made once (forwarded requests use it as it is).
    pub infer_path: String,
}

impl RemoteModelSpec {
    /// Puts an answer's outputs in the model's order, checking each one's datatype and fixed dims.
    fn order_outputs(&self, mut outputs: Vec<NamedTensor>) -> Result<Vec<Tensor>, AttemptError> {
        self.signature
            .outputs
            .iter()
            .map(|spec| {
                let at = outputs
                    .iter()
                    .position(|o| o.name == spec.name)
                    .ok_or_else(|| AttemptError::Malformed(format!("the answer has no output '{}'", spec.name)))?;
                let tensor = outputs.swap_remove(at).tensor;
                let shape = tensor.shape();
                let dims_agree = shape.len() == spec.dims.len() && shape.iter().zip(&spec.dims).all(|(&got, &want)| want < 0 || got as i64 == want);
                if tensor.dtype() != spec.dtype || !dims_agree {
                    return Err(AttemptError::Malformed(format!(
                        "output '{}' is {} {:?}, but the model declares {} {:?}",
                        spec.name,
                        tensor.dtype(),
                        shape,
                        spec.dtype,
                        spec.dims
                    )));
                }
                Ok(tensor)
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("upstream pool '{pool}': {message}")]
    Setup { pool: String, message: String },
    #[error("upstream pool '{pool}': no endpoint answered the metadata of model '{model}' within {waited:?} (last error: {last})")]
    NoMetadata { pool: String, model: String, waited: Duration, last: String },
}

pub struct Pool {
    pub name: String,
    config: UpstreamConfig,
    http: HttpClient,
    max_message_bytes: usize,
    limits: DecodeLimits,
    metrics: Metrics,
    /// Replaced as a whole when DNS changes the set, so a pick reads one consistent list.
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    /// Endpoints DNS dropped that attempts or checks may still hold. One that DNS lists again is taken back rather
    /// than made anew, so an address never has two endpoints (nor two sets of series on `/metrics`).
    departed: parking_lot::Mutex<Vec<Weak<Endpoint>>>,
    /// The models served, which every endpoint's metadata must match before it gets traffic.
    models: RwLock<Vec<Arc<RemoteModelSpec>>>,
    budget: RetryBudget,
    retries_sent: Counter,
    retries_budget: Counter,
    retries_deadline: Counter,
    /// What the gateway presents to the workers (`api_key_file`), read at start.
    api_key: Option<String>,
    /// Woken when a round of checks leaves an endpoint usable, for requests waiting for one (`wait_for_endpoint`).
    usable: tokio::sync::Notify,
    waits_found: Counter,
    waits_timed_out: Counter,
}

impl Pool {
    /// Sets the pool up (resolving its DNS name once, if it has one) without contacting any endpoint.
    pub async fn new(config: &UpstreamConfig, metrics: &Metrics, max_message_bytes: usize, limits: DecodeLimits) -> Result<Arc<Pool>, PoolError> {
        let retries = |result: &'static str| metrics.counter(catalogue::UPSTREAM_RETRIES, &[("pool", config.name.as_str()), ("result", result)]);
        let waits = |result: &'static str| metrics.counter(catalogue::UPSTREAM_WAITS, &[("pool", config.name.as_str()), ("result", result)]);
        let pool = Arc::new(Pool {
            name: config.name.clone(),
            config: config.clone(),
            http: transport::http_client(config),
            max_message_bytes,
            limits,
            metrics: metrics.clone(),
            endpoints: RwLock::new(Arc::new(Vec::new())),
            departed: parking_lot::Mutex::new(Vec::new()),
            models: RwLock::new(Vec::new()),
            budget: RetryBudget::new(config.retry_budget, config.min_retries_per_second),
            retries_sent: retries("sent"),
            retries_budget: retries("budget_exhausted"),
            retries_deadline: retries("deadline"),
            usable: tokio::sync::Notify::new(),
            api_key: config.api_key_file.as_deref().map(|path| read_api_key(&config.name, path)).transpose()?,
            waits_found: waits("found"),
            waits_timed_out: waits("timed_out"),
        });
        let addresses = match &config.dns {
            None => config.endpoints.clone(),
            Some(name) => resolve(name).await.unwrap_or_else(|e| {
                tracing::warn!(pool = %config.name, dns = %name, error = %e, "cannot resolve the upstream name yet; retrying in the background");
                Vec::new()
            }),
        };
        pool.set_addresses(addresses)?;
        Ok(pool)
    }

    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.read().clone()
    }

    /// Replaces the endpoint set, keeping the state of addresses already known.
    fn set_addresses(&self, addresses: Vec<String>) -> Result<(), PoolError> {
        let current = self.endpoints();
        let mut departed = self.departed.lock();
        let mut next = Vec::with_capacity(addresses.len());
        for address in addresses {
            if next.iter().any(|e: &Arc<Endpoint>| e.address == address) {
                continue;
            }
            if let Some(known) = current.iter().find(|e| e.address == address) {
                next.push(known.clone());
                continue;
            }
            if let Some(back) = departed.iter().filter_map(Weak::upgrade).find(|e| e.address == address) {
                // Possibly another server now (a new pod on a reused IP): its metadata is checked again first.
                back.unverify();
                tracing::info!(pool = %self.name, endpoint = %address, "upstream endpoint is back in the pool");
                next.push(back);
                continue;
            }
            let client = EndpointClient::new(&self.config, &address, &self.http, self.max_message_bytes, self.api_key.as_deref())
                .map_err(|message| PoolError::Setup { pool: self.name.clone(), message })?;
            next.push(Arc::new(Endpoint::new(&self.name, address, client, self.config.max_concurrency, &self.metrics)));
        }
        departed.retain(|e| e.upgrade().is_some_and(|e| !next.iter().any(|n| Arc::ptr_eq(n, &e))));
        for gone in current.iter().filter(|e| !next.iter().any(|n| Arc::ptr_eq(n, e))) {
            tracing::info!(pool = %self.name, endpoint = %gone.address, "upstream endpoint left the pool");
            gone.publish_gone();
            departed.push(Arc::downgrade(gone));
        }
        *self.endpoints.write() = Arc::new(next);
        Ok(())
    }

    /// Finds `model` on the pool: waits (up to `startup_timeout`) for an endpoint to answer its metadata, takes the
    /// first answer in endpoint order as the reference (endpoints are asked together), and checks every other
    /// endpoint that answers against it.
    pub async fn discover(self: &Arc<Self>, model: &str, idempotent: bool) -> Result<Arc<RemoteModelSpec>, PoolError> {
        let started = Instant::now();
        let mut last = String::from("no endpoint yet");
        let reference = loop {
            if let Some(dns) = &self.config.dns {
                if let Ok(addresses) = resolve(dns).await {
                    self.set_addresses(addresses)?;
                }
            }
            // Every endpoint is asked at once, so one that does not answer delays the round by one timeout, not
            // one per endpoint; the first answer in endpoint order is the reference, as if they were asked in turn.
            let endpoints = self.endpoints();
            let timeout = self.metadata_timeout();
            let answers = futures_util::future::join_all(
                endpoints.iter().map(|endpoint| tokio::time::timeout(timeout, endpoint.client.metadata(model, None))),
            )
            .await;
            let mut found = None;
            for (endpoint, answer) in endpoints.iter().zip(answers) {
                match answer {
                    Ok(Ok(metadata)) => {
                        found = Some((endpoint.clone(), metadata));
                        break;
                    }
                    Ok(Err(e)) => last = format!("{}: {e}", endpoint.address),
                    Err(_) => last = format!("{}: no answer", endpoint.address),
                }
            }
            if let Some(found) = found {
                break found;
            }
            if started.elapsed() >= self.config.startup_timeout {
                return Err(PoolError::NoMetadata { pool: self.name.clone(), model: model.into(), waited: started.elapsed(), last });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (endpoint, mut reference) = reference;
        // Requests go to the newest version the upstream lists (Triton lists the versions it has ready); the
        // signature is that version's, which may differ from the default version's.
        let version = reference.versions.iter().filter_map(|v| v.parse::<u64>().ok().map(|n| (n, v))).max().map(|(_, v)| v.clone());
        if let Some(v) = &version {
            match tokio::time::timeout(self.metadata_timeout(), endpoint.client.metadata(model, Some(v))).await {
                Ok(Ok(metadata)) => reference = metadata,
                Ok(Err(e)) => return Err(PoolError::Setup { pool: self.name.clone(), message: format!("model '{model}' version {v}: {e}") }),
                Err(_) => return Err(PoolError::Setup { pool: self.name.clone(), message: format!("model '{model}' version {v}: no metadata answer") }),
            }
        }
        let infer_path = transport::infer_path(model, version.as_deref());
        let spec = Arc::new(RemoteModelSpec { name: model.into(), version, signature: reference.signature, idempotent, infer_path });
        self.models.write().push(spec.clone());
        Ok(spec)
    }

    /// Serves `model` with the metadata the configuration declares (`upstreams.signatures`), asking no endpoint: the
    /// gateway can start with no worker up. Endpoints are checked against it like against a discovered one.
    pub fn declare(&self, model: &str, declared: &DeclaredSignature, idempotent: bool) -> Result<Arc<RemoteModelSpec>, PoolError> {
        let signature = declared
            .signature()
            .map_err(|e| PoolError::Setup { pool: self.name.clone(), message: format!("upstreams.signatures.{model}: {e}") })?;
        let version = declared.version.clone();
        let infer_path = transport::infer_path(model, version.as_deref());
        let spec = Arc::new(RemoteModelSpec { name: model.into(), version, signature, idempotent, infer_path });
        self.models.write().push(spec.clone());
        Ok(spec)
    }

    fn metadata_timeout(&self) -> Duration {
        self.config.health.timeout.max(self.config.connect_timeout)
    }

    /// Checks every endpoint against every model found so far (after [`Pool::discover`] has found them all).
    pub async fn verify_all(&self) {
        let mut checks = tokio::task::JoinSet::new();
        let endpoints = self.endpoints();
        for endpoint in endpoints.iter() {
            let endpoint = endpoint.clone();
            let models = self.models.read().clone();
            let timeout = self.metadata_timeout();
            checks.spawn(async move { verify_endpoint(&endpoint, &models, timeout).await });
        }
        while checks.join_next().await.is_some() {}
    }

    /// Checks one endpoint's metadata for every model against the pool's.
    async fn verify(&self, endpoint: &Endpoint) {
        let models = self.models.read().clone();
        verify_endpoint(endpoint, &models, self.metadata_timeout()).await;
    }

    /// Runs a request: one attempt, then retries on other endpoints while the failure allows it, the retry budget
    /// has tokens, `max_attempts` is not reached and `timeout` has time left.
    /// `deadline`: when the request's clients stop waiting; attempts and retries end by it, and gRPC workers are
    /// told each attempt's time (`grpc-timeout`).
    pub async fn infer(&self, model: &RemoteModelSpec, inputs: Vec<Tensor>, deadline: Option<Instant>) -> Result<Vec<Tensor>, UpstreamError> {
        let named: Vec<NamedTensor> =
            model.signature.inputs.iter().zip(inputs).map(|(spec, tensor)| NamedTensor { name: spec.name.clone(), tensor }).collect();
        let prepared = Prepared::new(self.config.protocol, &model.name, model.version.as_deref(), &named)
            .map_err(|e| e.into_upstream(&self.name, ""))?;
        drop(named);
        let (prepared, limits) = (&prepared, self.limits);
        self.attempts(model, deadline, |endpoint, time| async move {
            let outputs = endpoint.client.infer(prepared, limits, time).await?;
            model.order_outputs(outputs)
        })
        .await
    }

    /// Whether [`Pool::forward`] works: HTTP pools take a client's V2 HTTP body as it is.
    pub fn can_forward(&self) -> bool {
        self.config.protocol == crate::config::UpstreamProtocol::Http
    }

    /// Sends a client's V2 HTTP body to an endpoint as it is, with the same balancing, retries and ejection as
    /// [`Pool::infer`]; the answer comes back checked to be a V2 answer, not decoded.
    pub async fn forward(&self, model: &RemoteModelSpec, request: RawInfer) -> Result<RawAnswer, UpstreamError> {
        let (path, request) = (model.infer_path.as_str(), &request);
        self.attempts(model, None, |endpoint, _| async move { endpoint.client.forward(path, request).await }).await
    }

    /// The attempt loop of a request: `attempt` runs one try on the endpoint it is given.
    /// `client_deadline` lowers the pool's `timeout`; `attempt` gets the time its try has.
    async fn attempts<T, F, Fut>(&self, model: &RemoteModelSpec, client_deadline: Option<Instant>, attempt: F) -> Result<T, UpstreamError>
    where
        F: Fn(Arc<Endpoint>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, AttemptError>>,
    {
        let deadline_from = |start: Instant| client_deadline.map_or(start + self.config.timeout, |c| c.min(start + self.config.timeout));
        let mut deadline = deadline_from(Instant::now());
        self.budget.deposit();
        // The endpoints tried before this round (the last one is pushed only when a retry comes: most requests
        // succeed at once and never allocate the list).
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut current: Option<Arc<Endpoint>> = None;
        let mut last: Option<(AttemptError, String)> = None;
        for round in 0..self.config.max_attempts {
            let mut now = Instant::now();
            tried.extend(current.take());
            if round > 0 {
                let Some((err, _)) = &last else { break };
                if !err.retryable(model.idempotent) {
                    break;
                }
                if now + Duration::from_millis(1) >= deadline {
                    self.retries_deadline.increment(1);
                    break;
                }
                if !self.budget.withdraw(now) {
                    self.retries_budget.increment(1);
                    break;
                }
                self.retries_sent.increment(1);
            }
            let picked = match self.pick(&tried, now) {
                Some(endpoint) => Some(endpoint),
                // Nothing usable before the first attempt: every worker is gone or scaled to zero. Wait for one if
                // the pool says so; the attempts' deadline then counts from the end of the wait.
                None if last.is_none() => self.wait_for_endpoint(client_deadline).await.map(|(endpoint, found_at)| {
                    deadline = deadline_from(found_at);
                    now = found_at;
                    endpoint
                }),
                None => None,
            };
            let Some(endpoint) = picked else {
                if last.is_none() {
                    let last = match self.config.wait_for_endpoint.is_zero() {
                        true => "no endpoint is available".to_string(),
                        false => format!("no endpoint became available within {:?} (upstreams.wait_for_endpoint)", self.config.wait_for_endpoint),
                    };
                    return Err(UpstreamError::Unavailable { pool: self.name.clone(), last });
                }
                break;
            };
            current = Some(endpoint.clone());
            // Waiting for a slot on a full endpoint is bounded like an attempt; then another endpoint gets a chance.
            let wait = self.config.try_timeout.min(deadline.saturating_duration_since(now));
            let (flight, began) = match endpoint.try_begin(now) {
                Some(flight) => (Some(flight), now),
                None => (tokio::time::timeout(wait, endpoint.begin()).await.ok().flatten(), Instant::now()),
            };
            let Some(flight) = flight else {
                last = Some((AttemptError::Unavailable(format!("all {} of its slots stayed busy for {wait:?}", self.config.max_concurrency)), endpoint.address.clone()));
                continue;
            };
            let left = deadline.saturating_duration_since(began);
            let try_timeout = self.config.try_timeout.min(left);
            // Cut short by the clients' deadline (not the pool's own `timeout`): the endpoint is not to blame.
            let cut_by_client = client_deadline.is_some_and(|c| c <= deadline) && left < self.config.try_timeout;
            // Timed out here, or by tonic's timer for the `grpc-timeout` the attempt carries (the same time).
            let result = match tokio::time::timeout(try_timeout, attempt(endpoint.clone(), try_timeout)).await {
                Ok(Err(AttemptError::Timeout(_))) | Err(_) if cut_by_client => Err(AttemptError::ClientDeadline(try_timeout)),
                Ok(Err(AttemptError::Timeout(_))) | Err(_) => Err(AttemptError::Timeout(try_timeout)),
                Ok(result) => result,
            };
            match result {
                Ok(answer) => {
                    endpoint.finished(flight, 0, false, &self.config.ejection);
                    return Ok(answer);
                }
                Err(e) => {
                    let outcome = OUTCOMES.iter().position(|o| *o == e.outcome()).unwrap_or(OUTCOMES.len() - 1);
                    endpoint.finished(flight, outcome, e.counts_against_endpoint(), &self.config.ejection);
                    tracing::debug!(pool = %self.name, endpoint = %endpoint.address, attempt = round, error = %e, "upstream attempt failed");
                    last = Some((e, endpoint.address.clone()));
                }
            }
        }
        let (err, endpoint) = last.unwrap_or((AttemptError::Unavailable("no attempt was made".into()), String::new()));
        Err(err.into_upstream(&self.name, &endpoint))
    }

    /// Power of two choices: two random candidates, the cheaper wins. Candidates are the available endpoints not
    /// yet tried by this request (or tried ones, when none is left); when every endpoint is out of rotation, any
    /// verified one is tried rather than failing the request outright.
    fn pick(&self, tried: &[Arc<Endpoint>], now: Instant) -> Option<Arc<Endpoint>> {
        let all = self.endpoints();
        let fresh = |e: &&Arc<Endpoint>| !tried.iter().any(|t| Arc::ptr_eq(t, e));
        let tiers: [&EndpointFilter; 4] = [
            &|e| e.is_available(now) && fresh(e),
            &|e| e.is_available(now),
            &|e| e.is_usable() && fresh(e),
            &|e| e.is_usable(),
        ];
        let mut candidates: Vec<&Arc<Endpoint>> = Vec::new();
        for tier in tiers {
            candidates = all.iter().filter(|e| tier(e)).collect();
            if !candidates.is_empty() {
                break;
            }
        }
        // Endpoints at their concurrency limit are chosen only when all are.
        if candidates.iter().any(|e| e.has_free_slot()) {
            candidates.retain(|e| e.has_free_slot());
        }
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (candidates[a], candidates[b]);
                Some(if a.cost(now) <= b.cost(now) { a.clone() } else { b.clone() })
            }
        }
    }

    /// Waits up to `wait_for_endpoint` (and not past the clients' deadline) for an endpoint that may be used, when
    /// none may be now; returns it with the time it was picked. `None` at once when the pool does not wait.
    async fn wait_for_endpoint(&self, client_deadline: Option<Instant>) -> Option<(Arc<Endpoint>, Instant)> {
        if self.config.wait_for_endpoint.is_zero() {
            return None;
        }
        let most = Instant::now() + self.config.wait_for_endpoint;
        let until = tokio::time::Instant::from_std(client_deadline.map_or(most, |c| c.min(most)));
        loop {
            // Registered before the endpoints are looked at, so a round of checks that ends in between is not missed.
            let usable = self.usable.notified();
            tokio::pin!(usable);
            usable.as_mut().enable();
            let now = Instant::now();
            if let Some(endpoint) = self.pick(&[], now) {
                self.waits_found.increment(1);
                return Some((endpoint, now));
            }
            if tokio::time::timeout_at(until, usable).await.is_err() {
                self.waits_timed_out.increment(1);
                return None;
            }
        }
    }

    /// Keeps the pool fresh until it is dropped: DNS every `dns_refresh`, health checks and verification every
    /// `health.interval`.
    pub fn spawn_upkeep(self: &Arc<Self>) {
        let weak: Weak<Pool> = Arc::downgrade(self);
        let interval = self.config.health.interval;
        let dns_refresh = self.config.dns_refresh;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut resolved = Instant::now();
            loop {
                ticks.tick().await;
                let Some(pool) = weak.upgrade() else { break };
                if let Some(dns) = pool.config.dns.clone() {
                    if resolved.elapsed() >= dns_refresh {
                        resolved = Instant::now();
                        match resolve(&dns).await {
                            Ok(addresses) => {
                                if let Err(e) = pool.set_addresses(addresses) {
                                    tracing::warn!(pool = %pool.name, error = %e, "cannot update the upstream endpoints");
                                }
                            }
                            Err(e) => tracing::warn!(pool = %pool.name, dns = %dns, error = %e, "cannot re-resolve the upstream name; keeping the current endpoints"),
                        }
                    }
                }
                pool.check_all();
            }
        });
    }

    /// Starts a health check of every endpoint whose previous check has ended; ready but unverified endpoints get
    /// verified. Checks run on their own and are not waited for, so an endpoint that is slow to answer its checks
    /// or its metadata delays only its own next check, not the others'.
    fn check_all(self: &Arc<Self>) {
        for endpoint in self.endpoints().iter() {
            if !endpoint.begin_check() {
                continue;
            }
            let (pool, endpoint) = (self.clone(), CheckRunning(endpoint.clone()));
            tokio::spawn(async move {
                let endpoint = &endpoint.0;
                let ready = matches!(tokio::time::timeout(pool.config.health.timeout, endpoint.client.ready()).await, Ok(true));
                endpoint.checked(ready, &pool.config.health);
                endpoint.client.prune();
                if ready && (!endpoint.is_verified() || endpoint.is_mismatched()) {
                    pool.verify(endpoint).await;
                }
                endpoint.publish(Instant::now());
                if endpoint.is_usable() {
                    pool.usable.notify_waiters();
                }
            });
        }
    }
}

/// An endpoint whose check is running: marks the check ended when dropped, however the check task ends.
struct CheckRunning(Arc<Endpoint>);

impl Drop for CheckRunning {
    fn drop(&mut self) {
        self.0.end_check();
    }
}

/// Checks an endpoint's metadata for every model: any difference marks it mismatched; an endpoint that cannot
/// answer for every model stays (or becomes) unverified and gets no traffic until a later check passes.
async fn verify_endpoint(endpoint: &Endpoint, models: &[Arc<RemoteModelSpec>], timeout: Duration) {
    if models.is_empty() {
        return;
    }
    for model in models {
        match tokio::time::timeout(timeout, endpoint.client.metadata(&model.name, model.version.as_deref())).await {
            Ok(Ok(metadata)) => {
                if let Some(difference) = model.signature.difference(&metadata.signature) {
                    endpoint.verify(Err(format!("model '{}': {difference}", model.name)));
                    endpoint.publish(Instant::now());
                    return;
                }
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no metadata answer within {timeout:?}"),
                };
                endpoint.verification_failed(format!("model '{}': {why}", model.name));
                endpoint.publish(Instant::now());
                return;
            }
        }
    }
    endpoint.verify(Ok(()));
    endpoint.publish(Instant::now());
}

/// A test an endpoint passes to be a candidate.
type EndpointFilter<'a> = dyn Fn(&&Arc<Endpoint>) -> bool + 'a;

/// The key in `path`: its first line, trimmed (a mounted Secret may end in a newline).
fn read_api_key(pool: &str, path: &std::path::Path) -> Result<String, PoolError> {
    let failed = |message: String| PoolError::Setup { pool: pool.to_string(), message: format!("api_key_file {}: {message}", path.display()) };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let key = text.lines().next().unwrap_or("").trim();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(failed("must hold the key on its first line, in printable characters without spaces".into()));
    }
    Ok(key.to_string())
}

/// Longest wait for a DNS answer: the system resolver has its own retries, but a start or an upkeep round must not
/// hang on it.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves `host:port` to `ip:port` strings, sorted (so an unchanged answer keeps the same order).
async fn resolve(name: &str) -> std::io::Result<Vec<String>> {
    let answer = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host(name)).await;
    let answer = answer.map_err(|_| std::io::Error::other(format!("no answer within {DNS_TIMEOUT:?}")))??;
    let mut addresses: Vec<String> = answer.map(|a| a.to_string()).collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool found by DNS gets new addresses at every rollout: the series of an address that left must leave
    /// `/metrics` too, or their number grows for as long as the gateway runs.
    #[tokio::test]
    async fn an_endpoint_that_leaves_the_pool_leaves_the_metrics() {
        let metrics = Metrics::new(true);
        let config = UpstreamConfig {
            name: "p".into(),
            endpoints: vec!["127.0.0.1:9".into(), "127.0.0.1:10".into()],
            ..UpstreamConfig::default()
        };
        let pool = Pool::new(&config, &metrics, 1 << 20, DecodeLimits { max_elements: 1 << 20 }).await.expect("pool");
        let render = || metrics.render(&crate::scaling::ScalingSnapshot::empty(0.7)).expect("metrics are enabled");
        let text = render();
        let series = |endpoint: &str| format!("{}{{pool=\"p\",endpoint=\"{endpoint}\"}} 0", catalogue::UPSTREAM_AVAILABLE);
        assert!(text.contains(&series("127.0.0.1:9")) && text.contains(&series("127.0.0.1:10")), "{text}");

        // An attempt in flight keeps the leaving endpoint (and its series) until it ends.
        let leaving = pool.endpoints().iter().find(|e| e.address == "127.0.0.1:10").cloned().expect("listed");
        pool.set_addresses(vec!["127.0.0.1:9".into(), "127.0.0.1:11".into()]).expect("new set");
        let text = render();
        assert!(text.contains(&series("127.0.0.1:10")) && text.contains(&series("127.0.0.1:11")), "{text}");
        // Listed again while an attempt still holds it: the same endpoint comes back, with one set of series.
        pool.set_addresses(vec!["127.0.0.1:9".into(), "127.0.0.1:10".into(), "127.0.0.1:11".into()]).expect("back");
        assert!(pool.endpoints().iter().any(|e| Arc::ptr_eq(e, &leaving)), "the departed endpoint was not taken back");
        assert_eq!(render().matches(&series("127.0.0.1:10")).count(), 1);
        pool.set_addresses(vec!["127.0.0.1:9".into(), "127.0.0.1:11".into()]).expect("gone again");
        drop(leaving);
        let text = render();
        assert!(!text.contains("127.0.0.1:10\""), "{text}");
        assert!(text.contains(&series("127.0.0.1:9")) && text.contains(&series("127.0.0.1:11")), "{text}");
    }
}
