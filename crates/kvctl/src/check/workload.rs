//! The checking workload: concurrent sessions of unique writes and reads,
//! and with a [`Mix`] that asks for them, snapshot reads and atomic writes
//! of several keys.

use std::time::{Duration, Instant};

use awc::http::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vclock_proto::{
    GetResponse, PutRequest, PutResponse, ReadResponse, TxnReadRequest, TxnReadResponse,
    TxnWriteRequest, VClock, Value, Write, WriteRequest, WriteResponse,
};

use super::history::{Api, FinalState, History, Invocation, Outcome, Recorder};
use crate::percent_encode as encode;
use crate::transport::{Agent, CallError, Transport};
use crate::{context_query, kv_path};

/// What to run.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Node base URLs.
    pub nodes: Vec<String>,
    /// The API the sessions use.
    pub api: Api,
    /// Concurrent sessions.
    pub sessions: usize,
    /// Operations per session.
    pub ops_per_session: usize,
    /// Number of keys (`check-<run>-0` ...).
    pub keys: usize,
    /// Share of writes among operations, 0..=1.
    pub write_ratio: f64,
    /// Timeout of one request; a request without an answer has an unknown outcome.
    pub timeout: Duration,
    /// How long to wait for every node to reach the same clock at the end.
    pub quiesce_timeout: Duration,
    /// Seed of the random choices.
    pub seed: u64,
    /// A bearer token to send (the nodes' `client_token`), if any.
    pub token: Option<String>,
}

/// What else a workload's sessions do beside single-key writes and reads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Mix {
    /// Share of the operations that are not writes done as snapshot reads
    /// (`POST /v1/txn/read`, through the native API whatever the workload's)
    /// of 2 to 4 of the workload's keys, 0..=1.
    pub snapshots: f64,
    /// Share of the writes done as atomic writes (`POST /v1/txn/write`,
    /// through the native API whatever the workload's) of 2 to 4 of the
    /// workload's keys, 0..=1.
    pub txn_writes: f64,
}

impl Mix {
    /// Half of the reads are snapshot reads, half of the writes atomic
    /// writes of several keys (`kvctl check --txn`).
    pub fn txn() -> Self {
        Self {
            snapshots: 0.5,
            txn_writes: 0.5,
        }
    }
}

/// `count` distinct keys of `keys` (at most all of them), picked at random.
fn pick_keys(rng: &mut StdRng, keys: &[String], count: usize) -> Vec<String> {
    let count = count.min(keys.len());
    let picked = rand::seq::index::sample(rng, keys.len(), count).into_iter();
    picked.map(|k| keys[k].clone()).collect()
}

impl Workload {
    /// How the workload's requests are sent: its timeout and token.
    pub fn transport(&self) -> Transport {
        Transport::new()
            .with_timeout(self.timeout)
            .with_optional_token(self.token.clone())
    }
}

/// Runs the workload and returns its history (with the final state of every
/// node when they reached the same clock in time).
pub async fn run(workload: &Workload) -> History {
    run_with(workload, Mix::default()).await
}

/// As [`run`], with the operations of `mix` among the sessions'.
pub async fn run_with(workload: &Workload, mix: Mix) -> History {
    let mut history = run_sessions_with(workload, mix).await;
    finish(workload, &mut history).await;
    history
}

/// Runs the sessions only: the history has no final state yet.
pub async fn run_sessions(workload: &Workload) -> History {
    run_sessions_with(workload, Mix::default()).await
}

/// As [`run_sessions`], with the operations of `mix` among the sessions'.
pub async fn run_sessions_with(workload: &Workload, mix: Mix) -> History {
    let agent = workload.transport().agent();
    // Fresh keys and values for every run, so that earlier runs cannot be
    // mistaken for this one's writes.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
        ^ workload.seed;
    let run_id = format!("{run_id:x}");
    let keys: Vec<String> = (0..workload.keys.max(1))
        .map(|k| format!("check-{run_id}-{k}"))
        .collect();
    let recorder = Recorder::new(workload.api, workload.nodes.iter().cloned());
    let sessions = (0..workload.sessions).map(|s| {
        let rng =
            StdRng::seed_from_u64(workload.seed.wrapping_mul(1_000_003).wrapping_add(s as u64));
        session(workload, mix, &agent, &keys, &run_id, s, rng, &recorder)
    });
    futures_util::future::join_all(sessions).await;
    let mut history = recorder.into_history();
    // Every key, those no session happened to use too.
    history.keys = keys;
    history
}

/// Waits until every node has the same clock, then reads every key at every
/// node into the history's final state.
pub async fn finish(workload: &Workload, history: &mut History) {
    let agent = workload.transport().agent();
    if wait_for_quiescence(workload, &agent).await {
        let states = final_states(workload, &agent, &history.keys).await;
        history.finish(states);
    }
}

/// Records how a call that got no usable answer ended: refused or never sent,
/// it did not happen; otherwise it may have.
fn record_failure(recorder: &Recorder, call: Invocation, error: &CallError) {
    let outcome = if error.may_have_happened() {
        Outcome::Unknown
    } else {
        Outcome::Failed
    };
    recorder.failed(call, outcome, error.to_string());
}

/// A read's answer, by API.
enum Read {
    Value(ReadResponse),
    Siblings(GetResponse),
}

#[allow(clippy::too_many_arguments)]
async fn session(
    workload: &Workload,
    mix: Mix,
    agent: &Agent,
    keys: &[String],
    run: &str,
    id: usize,
    mut rng: StdRng,
    recorder: &Recorder,
) {
    let mut context = VClock::new();
    let mut written = 0usize;
    for _ in 0..workload.ops_per_session {
        let node = &workload.nodes[rng.random_range(0..workload.nodes.len())];
        let key = &keys[rng.random_range(0..keys.len())];
        let write = rng.random_bool(workload.write_ratio.clamp(0.0, 1.0));
        if write && mix.txn_writes > 0.0 && rng.random_bool(mix.txn_writes.min(1.0)) {
            let count = rng.random_range(2..=4);
            let writes: Vec<(String, String)> = pick_keys(&mut rng, keys, count)
                .into_iter()
                .map(|key| {
                    written += 1;
                    (key, format!("{run}-s{id}-{written}"))
                })
                .collect();
            let call = recorder
                .invoke_txn_write(id, node, &writes, &context)
                .via(Api::Native);
            let writes = writes.into_iter().map(|(key, value)| {
                Write::put(
                    key,
                    Value::from_serialize(&value).expect("strings serialise"),
                )
            });
            let body = TxnWriteRequest {
                writes: writes.collect(),
                context: Some(context.clone()),
            };
            let url = format!("{node}/v1/txn/write");
            let answer = agent
                .call::<_, PutResponse>(Method::POST, &url, Some(&body))
                .await
                .map(|r| r.timestamp);
            record_write(recorder, call, &mut context, answer);
        } else if write {
            written += 1;
            let value = format!("{run}-s{id}-{written}");
            let call = recorder.invoke_write(id, node, key, &value, &context);
            let value = Value::from_serialize(&value).expect("strings serialise");
            let answer = match workload.api {
                Api::Compat => {
                    let body = WriteRequest {
                        key: key.clone(),
                        value,
                        context: Some(context.clone()),
                    };
                    let url = format!("{node}/write");
                    agent
                        .call::<_, WriteResponse>(Method::POST, &url, Some(&body))
                        .await
                        .map(|r| r.timestamp)
                }
                Api::Native => {
                    let body = PutRequest {
                        value,
                        context: Some(context.clone()),
                    };
                    let url = format!("{node}{}", kv_path(key, ""));
                    agent
                        .call::<_, PutResponse>(Method::PUT, &url, Some(&body))
                        .await
                        .map(|r| r.timestamp)
                }
            };
            record_write(recorder, call, &mut context, answer);
        } else if mix.snapshots > 0.0 && rng.random_bool(mix.snapshots.min(1.0)) {
            let count = rng.random_range(2..=4);
            let picked = pick_keys(&mut rng, keys, count);
            let call = recorder
                .invoke_snapshot(id, node, &picked, &context)
                .via(Api::Native);
            let body = TxnReadRequest {
                keys: picked,
                context: Some(context.clone()),
            };
            let url = format!("{node}/v1/txn/read");
            match agent
                .call::<_, TxnReadResponse>(Method::POST, &url, Some(&body))
                .await
            {
                Ok(answer) => {
                    context.merge(&answer.context);
                    recorder.snapshot(call, &answer);
                }
                Err(e) => record_failure(recorder, call, &e),
            }
        } else {
            let call = recorder.invoke_read(id, node, key, &context);
            let answer = match workload.api {
                Api::Compat => {
                    let url = format!("{node}/read?key={}", encode(key));
                    agent.get(&url).await.map(Read::Value)
                }
                Api::Native => {
                    let url = format!("{node}{}", kv_path(key, &context_query(Some(&context))));
                    agent.get(&url).await.map(Read::Siblings)
                }
            };
            match answer {
                Ok(Read::Value(answer)) => {
                    context.merge(&answer.timestamp);
                    recorder.read_value(call, &answer);
                }
                Ok(Read::Siblings(answer)) => {
                    context.merge(&answer.context);
                    recorder.read_siblings(call, &answer);
                }
                Err(e) => record_failure(recorder, call, &e),
            }
        }
    }
}

/// Completes a write's record with its answer; an acknowledged write's
/// timestamp joins the session's context.
fn record_write(
    recorder: &Recorder,
    call: Invocation,
    context: &mut VClock,
    answer: Result<VClock, CallError>,
) {
    match answer {
        Ok(timestamp) => {
            context.merge(&timestamp);
            recorder.written(call, timestamp);
        }
        Err(e) => record_failure(recorder, call, &e),
    }
}

/// The node's applied clock, from `GET /health`; `None` when it does not answer.
async fn applied_clock(agent: &Agent, node: &str) -> Option<VClock> {
    agent.health(node).await.ok().map(|h| h.timestamp)
}

async fn wait_for_quiescence(workload: &Workload, agent: &Agent) -> bool {
    let deadline = Instant::now() + workload.quiesce_timeout;
    let mut previous: Option<VClock> = None;
    while Instant::now() < deadline {
        let mut clocks = Vec::new();
        for node in &workload.nodes {
            if let Some(clock) = applied_clock(agent, node).await {
                clocks.push(clock);
            }
        }
        let agreed =
            clocks.len() == workload.nodes.len() && clocks.windows(2).all(|w| w[0] == w[1]);
        if agreed {
            if previous.as_ref() == clocks.first() {
                return true;
            }
            previous = clocks.first().cloned();
        } else {
            previous = None;
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn final_states(workload: &Workload, agent: &Agent, keys: &[String]) -> Vec<FinalState> {
    let mut states = Vec::new();
    for node in &workload.nodes {
        let applied = applied_clock(agent, node).await.unwrap_or_default();
        let mut state = FinalState::new(node.clone(), applied);
        for key in keys {
            let url = format!("{node}{}", kv_path(key, ""));
            if let Ok(answer) = agent.get::<GetResponse>(&url).await {
                state.insert(key.clone(), &answer);
            }
        }
        states.push(state);
    }
    states
}
