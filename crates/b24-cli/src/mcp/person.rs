//! The person behind an MCP client, reached through elicitation (form mode): destructive calls
//! (and, when the operator asks, every write) are confirmed by a person, not by the model.

use b24_guard::gate::{Answer, Person};
use futures::future::BoxFuture;
use rmcp::model::{
    ClientResult, ElicitRequest, ElicitRequestParams, ElicitationAction, ElicitationSchema,
    ProtocolVersion, ServerRequest,
};
use rmcp::{Peer, RoleServer};
use serde_json::Value;

/// How long a person has to answer a confirmation request.
const ELICIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The person behind an MCP client, reached through elicitation (form mode).
pub struct McpPerson {
    pub(super) peer: Peer<RoleServer>,
    pub(super) enabled: bool,
    /// The request's own `_meta` declared form elicitation (stateless protocol eras carry the
    /// client's capabilities on every request instead of at initialization).
    pub(super) meta_declared: bool,
}

impl McpPerson {
    /// The client declared form elicitation (whatever its protocol version).
    fn declared(&self) -> bool {
        self.enabled
            && (self.meta_declared
                || self.peer.peer_info().is_some_and(|info| {
                    info.capabilities
                        .elicitation
                        .as_ref()
                        .is_some_and(|c| c.form.is_some() || c.url.is_none())
                }))
    }

    fn supported(&self) -> bool {
        if !self.enabled {
            return false;
        }
        let Some(info) = self.peer.peer_info() else {
            return false;
        };
        // 2026-07-28 forbids server-to-client requests (it would need a multi-round-trip
        // result); older clients must have declared form elicitation.
        let form = info
            .capabilities
            .elicitation
            .as_ref()
            .is_some_and(|c| c.form.is_some() || c.url.is_none());
        form && info.protocol_version < ProtocolVersion::V_2026_07_28
    }
}

impl Person for McpPerson {
    fn can_ask(&self) -> bool {
        self.supported()
    }

    fn declares_person(&self) -> bool {
        self.declared()
    }

    fn ask(&self, question: String) -> BoxFuture<'_, Answer> {
        Box::pin(async move {
            if !self.supported() {
                return Answer::CannotAsk;
            }
            let Ok(schema) = ElicitationSchema::builder()
                .required_bool("confirm")
                .build()
            else {
                return Answer::CannotAsk;
            };
            let req = ServerRequest::ElicitRequest(ElicitRequest::new(
                ElicitRequestParams::FormElicitationParams {
                    meta: None,
                    message: b24_guard::redact::text(&question),
                    requested_schema: schema,
                },
            ));
            match tokio::time::timeout(ELICIT_TIMEOUT, self.peer.send_request(req)).await {
                Ok(Ok(ClientResult::ElicitResult(r))) => match r.action {
                    ElicitationAction::Accept
                        if r.content
                            .as_ref()
                            .and_then(|c| c.get("confirm"))
                            .and_then(Value::as_bool)
                            == Some(true) =>
                    {
                        Answer::Yes
                    }
                    ElicitationAction::Accept => {
                        Answer::No("the person did not tick confirm".into())
                    }
                    ElicitationAction::Decline => Answer::No("the person declined".into()),
                    _ => Answer::No("the person cancelled".into()),
                },
                Ok(Ok(_)) => Answer::CannotAsk,
                Ok(Err(e)) => {
                    tracing::info!("mcp: elicitation failed: {e}");
                    Answer::CannotAsk
                }
                Err(_) => Answer::No("no answer within 10 minutes".into()),
            }
        })
    }
}
