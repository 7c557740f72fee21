//! The checking workload: concurrent sessions of unique writes and reads.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::http::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vclock_proto::{
    GetResponse, PutRequest, PutResponse, ReadResponse, VClock, Value, WriteRequest, WriteResponse,
};

use super::history::{Api, FinalSibling, FinalState, History, Op, OpKind, Outcome};
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

struct Recorder {
    ops: Vec<Op>,
    started: Instant,
}

impl Recorder {
    fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }
}

/// How an operation that got no usable answer ended: refused or never sent,
/// it did not happen; otherwise it may have.
fn outcome_of(error: &CallError) -> Outcome {
    if error.may_have_happened() {
        Outcome::Unknown
    } else {
        Outcome::Failed
    }
}

fn as_text(value: &Value) -> Option<String> {
    match value.to_json_value() {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
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
    let mut history = run_sessions(workload).await;
    finish(workload, &mut history).await;
    history
}

/// Runs the sessions only: the history has no final state yet.
pub async fn run_sessions(workload: &Workload) -> History {
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
    let recorder = Rc::new(RefCell::new(Recorder {
        ops: Vec::new(),
        started: Instant::now(),
    }));
    let sessions = (0..workload.sessions).map(|s| {
        let rng =
            StdRng::seed_from_u64(workload.seed.wrapping_mul(1_000_003).wrapping_add(s as u64));
        session(workload, &agent, &keys, &run_id, s, rng, recorder.clone())
    });
    futures_util::future::join_all(sessions).await;
    let mut ops = std::mem::take(&mut recorder.borrow_mut().ops);
    ops.sort_by_key(|o| o.id);
    History {
        api: workload.api,
        nodes: workload.nodes.clone(),
        keys,
        ops,
        final_states: Vec::new(),
        quiescent: false,
    }
}

/// Waits until every node has the same clock, then reads every key at every
/// node into the history's final state.
pub async fn finish(workload: &Workload, history: &mut History) {
    let agent = workload.transport().agent();
    history.quiescent = wait_for_quiescence(workload, &agent).await;
    if history.quiescent {
        history.final_states = final_states(workload, &agent, &history.keys).await;
    }
}

async fn session(
    workload: &Workload,
    agent: &Agent,
    keys: &[String],
    run: &str,
    id: usize,
    mut rng: StdRng,
    recorder: Rc<RefCell<Recorder>>,
) {
    let mut context = VClock::new();
    let mut written = 0usize;
    for _ in 0..workload.ops_per_session {
        let node = workload.nodes[rng.random_range(0..workload.nodes.len())].clone();
        let key = keys[rng.random_range(0..keys.len())].clone();
        let write = rng.random_bool(workload.write_ratio.clamp(0.0, 1.0));
        let (op_id, invoked_ms) = {
            let mut r = recorder.borrow_mut();
            let id = r.ops.len();
            // Reserve the id now, so ids follow invocation order.
            r.ops.push(Op {
                id,
                session: 0,
                node: String::new(),
                key: String::new(),
                kind: OpKind::Read {
                    values: vec![],
                    clock: None,
                },
                context: VClock::new(),
                outcome: Outcome::Unknown,
                invoked_ms: 0.0,
                completed_ms: 0.0,
                error: None,
            });
            (id, r.now_ms())
        };
        let sent_context = context.clone();
        let (kind, outcome, error) = if write {
            written += 1;
            let value = format!("{run}-s{id}-{written}");
            let json = Value::from_serialize(&value).expect("strings serialise");
            let answer = match workload.api {
                Api::Compat => {
                    let body = WriteRequest {
                        key: key.clone(),
                        value: json,
                        context: Some(context.clone()),
                    };
                    agent
                        .call::<_, WriteResponse>(
                            Method::POST,
                            &format!("{node}/write"),
                            Some(&body),
                        )
                        .await
                        .map(|r| r.timestamp)
                }
                Api::Native => {
                    let body = PutRequest {
                        value: json,
                        context: Some(context.clone()),
                    };
                    let url = format!("{node}{}", kv_path(&key, ""));
                    agent
                        .call::<_, PutResponse>(Method::PUT, &url, Some(&body))
                        .await
                        .map(|r| r.timestamp)
                }
            };
            match answer {
                Ok(ts) => {
                    context.merge(&ts);
                    let timestamp = Some(ts);
                    (OpKind::Write { value, timestamp }, Outcome::Ok, None)
                }
                Err(e) => {
                    let timestamp = None;
                    let outcome = outcome_of(&e);
                    (
                        OpKind::Write { value, timestamp },
                        outcome,
                        Some(e.to_string()),
                    )
                }
            }
        } else {
            let answer = match workload.api {
                Api::Compat => {
                    let url = format!("{node}/read?key={}", encode(&key));
                    agent
                        .get::<ReadResponse>(&url)
                        .await
                        .map(|r| (vec![as_text(&r.value)], r.timestamp))
                }
                Api::Native => {
                    let url = format!("{node}{}", kv_path(&key, &context_query(Some(&context))));
                    agent.get::<GetResponse>(&url).await.map(|r| {
                        let values = r
                            .siblings
                            .iter()
                            .filter(|s| !s.deleted)
                            .map(|s| as_text(&s.value))
                            .collect();
                        (values, r.context)
                    })
                }
            };
            match answer {
                Ok((values, clock)) => {
                    context.merge(&clock);
                    let clock = Some(clock);
                    (OpKind::Read { values, clock }, Outcome::Ok, None)
                }
                Err(e) => {
                    let (values, clock) = (Vec::new(), None);
                    let outcome = outcome_of(&e);
                    (OpKind::Read { values, clock }, outcome, Some(e.to_string()))
                }
            }
        };
        let mut r = recorder.borrow_mut();
        let completed_ms = r.now_ms();
        r.ops[op_id] = Op {
            id: op_id,
            session: id,
            node,
            key,
            kind,
            context: sent_context,
            outcome,
            invoked_ms,
            completed_ms,
            error,
        };
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
        let mut state = FinalState {
            node: node.clone(),
            applied: VClock::new(),
            keys: Default::default(),
        };
        if let Some(clock) = applied_clock(agent, node).await {
            state.applied = clock;
        }
        for key in keys {
            let url = format!("{node}{}", kv_path(key, ""));
            if let Ok(r) = agent.get::<GetResponse>(&url).await {
                let siblings = r
                    .siblings
                    .iter()
                    .map(|s| FinalSibling {
                        value: if s.deleted { None } else { as_text(&s.value) },
                        timestamp: s.timestamp.clone(),
                    })
                    .collect();
                state.keys.insert(key.clone(), siblings);
            }
        }
        states.push(state);
    }
    states
}
