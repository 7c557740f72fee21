//! The OpenAPI document of every route, served at `GET /openapi.json`.
//!
//! Each handler in [`super::routes`] carries its `#[utoipa::path]`; the message
//! schemas come from `vclock-proto` (its `openapi` feature). A test checks that
//! the document and [`super::ENDPOINTS`] list the same routes.

use serde_json::json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

use crate::config::Config;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kvnode",
        description = "A node of the causally consistent key-value store. Errors on every route \
            are JSON: {\"error\":{\"code\":...,\"message\":...}}. When the node is configured \
            with a client_token, client routes need `Authorization: Bearer <client_token>`; \
            with a cluster_secret, peer, membership and fault-hook routes need \
            `Authorization: Bearer <cluster_secret>`.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        crate::http::routes::health,
        crate::http::routes::write,
        crate::http::routes::read,
        crate::http::routes::get_key,
        crate::http::routes::put_key,
        crate::http::routes::delete_key,
        crate::http::routes::txn_read,
        crate::http::routes::txn_write,
        crate::http::routes::receive_events,
        crate::http::routes::sync_clock,
        crate::http::routes::snapshot,
        crate::http::routes::peer_members,
        crate::http::routes::members,
        crate::http::routes::add_member,
        crate::http::routes::remove_member,
        crate::http::routes::replace_member,
        crate::http::routes::status,
        crate::http::routes::metrics_text,
        crate::http::routes::trace,
        crate::http::routes::trace_stream,
        crate::http::routes::openapi_json,
        crate::http::routes::links,
        crate::http::routes::set_link,
    ),
    modifiers(&BearerSchemes),
    tags(
        (name = "compatibility", description = "The prototype's API, field for field"),
        (name = "native", description = "Siblings, deletes and causal contexts"),
        (name = "peer", description = "Replication and clock exchange between nodes of the cluster"),
        (name = "membership", description = "Add, remove and replace nodes of a running cluster"),
        (name = "operations", description = "State, metrics and this document"),
        (name = "faults", description = "The fault hook: pause and resume replication links (faults = true)"),
    )
)]
struct ApiDoc;

#[derive(Debug)]
struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("client_token", "the node's client_token (client routes)"),
            (
                "cluster_secret",
                "the cluster_secret (peer and fault-hook routes)",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(format!(
                            "Required when the node is configured with {what}"
                        )))
                        .build(),
                ),
            );
        }
    }
}

/// The document, as for any cluster.
pub fn document() -> Document {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document
}

/// The document as this node serves it: [`document`] narrowed to this cluster
/// and these limits (clock entries name the cluster's nodes, senders are
/// peers, keys are 1 to `max_key_bytes` long), so that a client or a test
/// generator reading it sends requests the node can accept.
pub fn document_for(config: &Config) -> serde_json::Value {
    let mut document = serde_json::to_value(document()).unwrap_or_default();
    let ids: Vec<&str> = config.members.iter().map(|m| m.id.as_str()).collect();
    let peers: Vec<&str> = config.peers().map(|m| m.id.as_str()).collect();
    let schemas = &mut document["components"]["schemas"];
    schemas["VClock"]["propertyNames"] = json!({ "enum": ids });
    for (schema, field) in [("Event", "origin"), ("Dot", "origin"), ("Missing", "node")] {
        schemas[schema]["properties"][field] = json!({ "type": "string", "enum": ids });
    }
    if !peers.is_empty() {
        schemas["EventBatch"]["properties"]["from"] = json!({ "type": "string", "enum": peers });
        schemas["ClockMessage"]["properties"]["node"] = json!({ "type": "string", "enum": ids });
    }
    let key = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": config.max_key_bytes,
        "description": "A key: 1 to max_key_bytes bytes of UTF-8",
    });
    for schema in ["WriteRequest", "Event", "Write"] {
        schemas[schema]["properties"]["key"] = key.clone();
    }
    if let Some(paths) = document["paths"].as_object_mut() {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for operation in item.values_mut() {
                let parameters = operation.get_mut("parameters");
                let Some(parameters) = parameters.and_then(|p| p.as_array_mut()) else {
                    continue;
                };
                for parameter in parameters {
                    if parameter["name"] == "key" {
                        parameter["schema"] = key.clone();
                    }
                }
            }
        }
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_document_names_the_cluster() {
        let node = crate::node::test_node(&[("KVNODE_MAX_KEY_BYTES", "100")]);
        let served = document_for(node.config());
        let schemas = &served["components"]["schemas"];
        assert_eq!(
            schemas["VClock"]["propertyNames"]["enum"],
            json!(["n1", "n2", "n3"])
        );
        assert_eq!(
            schemas["EventBatch"]["properties"]["from"]["enum"],
            json!(["n2", "n3"])
        );
        assert_eq!(
            schemas["WriteRequest"]["properties"]["key"]["maxLength"],
            100
        );
        let get = &served["paths"]["/v1/kv/{key}"]["get"]["parameters"][0];
        assert_eq!(
            (&get["name"], &get["schema"]["minLength"]),
            (&json!("key"), &json!(1))
        );
        // Nothing else is added: operations without parameters stay without.
        let generic = serde_json::to_value(document()).unwrap();
        assert_eq!(
            served["paths"].as_object().unwrap().len(),
            generic["paths"].as_object().unwrap().len()
        );
        assert!(served["paths"]["/health"]["get"]
            .get("parameters")
            .is_none());
    }

    #[test]
    fn every_referenced_schema_is_defined() {
        let text = document().to_json().unwrap();
        let components = document().components.unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("#/components/schemas/") {
            rest = &rest[at + "#/components/schemas/".len()..];
            let name: String = rest.chars().take_while(|c| *c != '"').collect();
            assert!(
                components.schemas.contains_key(&name),
                "{name} is referenced but not defined"
            );
        }
    }
}
