//! A blocking client of one node's HTTP APIs, for the scenarios.
//!
//! Deliberately not `kvctl`: the scenarios check the wire answers themselves
//! (clocks, siblings, status), so they read the raw messages of `vclock-proto`.

use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;
use vclock_proto::{
    AddMemberRequest, GetResponse, HealthResponse, MembersMessage, PutResponse, ReadResponse,
    StatusResponse, VClock, WriteResponse,
};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a whole request may take: more than a node's `causal_wait` (5 s), so
/// that a node that cannot satisfy a context answers 503 before we give up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One node, as the host reaches it.
#[derive(Clone, Debug)]
pub(crate) struct NodeClient {
    /// The node's id, e.g. `node1`.
    pub(crate) id: String,
    /// Its base URL through the published port, e.g. `http://127.0.0.1:15001`.
    pub(crate) url: String,
    /// Sent as a bearer token on admin requests, when the cluster has one.
    cluster_secret: Option<String>,
    agent: ureq::Agent,
}

impl NodeClient {
    pub(crate) fn new(id: &str, url: &str, cluster_secret: Option<&str>) -> Self {
        Self {
            id: id.to_owned(),
            url: url.to_owned(),
            cluster_secret: cluster_secret.map(str::to_owned),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .build(),
        }
    }

    /// `GET /health`.
    pub(crate) fn health(&self) -> anyhow::Result<HealthResponse> {
        self.call(self.agent.get(&self.path("/health")), None)
    }

    /// `POST /write` (the prototype's API).
    pub(crate) fn write(
        &self,
        key: &str,
        value: &serde_json::Value,
        context: Option<&VClock>,
    ) -> anyhow::Result<WriteResponse> {
        let mut body = serde_json::json!({ "key": key, "value": value });
        if let Some(context) = context {
            body["context"] = serde_json::to_value(context)?;
        }
        self.call(self.agent.post(&self.path("/write")), Some(body))
    }

    /// `GET /read?key=K` (the prototype's API).
    pub(crate) fn read(&self, key: &str) -> anyhow::Result<ReadResponse> {
        let request = self.agent.get(&self.path("/read")).query("key", key);
        self.call(request, None)
    }

    /// `GET /v1/kv/{key}`, after `context` when given.
    pub(crate) fn get(&self, key: &str, context: Option<&VClock>) -> anyhow::Result<GetResponse> {
        let mut request = self.agent.get(&self.path(&format!("/v1/kv/{key}")));
        if let Some(context) = context {
            request = request.query("context", &serde_json::to_string(context)?);
        }
        self.call(request, None)
    }

    /// `PUT /v1/kv/{key}` with `{"value","context"}`.
    pub(crate) fn put(
        &self,
        key: &str,
        value: &serde_json::Value,
        context: Option<&VClock>,
    ) -> anyhow::Result<PutResponse> {
        let mut body = serde_json::json!({ "value": value });
        if let Some(context) = context {
            body["context"] = serde_json::to_value(context)?;
        }
        let request = self.agent.put(&self.path(&format!("/v1/kv/{key}")));
        self.call(request, Some(body))
    }

    /// `GET /status`.
    pub(crate) fn status(&self) -> anyhow::Result<StatusResponse> {
        self.call(self.agent.get(&self.path("/status")), None)
    }

    /// `POST /admin/v1/links/{peer}/{pause|resume}`: the fault hook.
    pub(crate) fn link(&self, peer: &str, action: LinkAction) -> anyhow::Result<()> {
        let action = match action {
            LinkAction::Pause => "pause",
            LinkAction::Resume => "resume",
        };
        let request = self
            .agent
            .post(&self.path(&format!("/admin/v1/links/{peer}/{action}")));
        self.call::<serde_json::Value>(self.admin(request), Some(serde_json::json!({})))
            .map(drop)
    }

    /// `POST /admin/v1/members`: adds the node `id`, which the other nodes
    /// reach at `url`; the answer is the membership with it.
    pub(crate) fn add_member(&self, id: &str, url: &str) -> anyhow::Result<MembersMessage> {
        let body = AddMemberRequest {
            id: id.to_owned(),
            url: url.to_owned(),
        };
        let request = self.agent.post(&self.path("/admin/v1/members"));
        self.call(self.admin(request), Some(serde_json::to_value(body)?))
    }

    /// `DELETE /admin/v1/members/{id}`: removes the node `id` (asked of
    /// another node); the answer is the membership without it.
    pub(crate) fn remove_member(&self, id: &str) -> anyhow::Result<MembersMessage> {
        let request = self
            .agent
            .delete(&self.path(&format!("/admin/v1/members/{id}")));
        self.call(self.admin(request), None)
    }

    /// The request with the cluster secret as its bearer token, when there is one.
    fn admin(&self, request: ureq::Request) -> ureq::Request {
        match &self.cluster_secret {
            Some(secret) => request.set("Authorization", &format!("Bearer {secret}")),
            None => request,
        }
    }

    fn path(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Sends the request; any answer but 2xx is an error that quotes the body.
    fn call<T: DeserializeOwned>(
        &self,
        request: ureq::Request,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let what = format!("{} {} at {}", request.method(), request.url(), self.id);
        let answer = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        let response = match answer {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(err) => anyhow::bail!("{what}: {err}"),
        };
        let status = response.status();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes)
            .with_context(|| format!("{what}: reading the answer"))?;
        vclock_proto::decode_answer(status, &bytes)
            .map_err(|error| anyhow::anyhow!("{what}: {status} {}: {}", error.code, error.message))
    }
}

/// What to do with a replication link.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LinkAction {
    Pause,
    Resume,
}
