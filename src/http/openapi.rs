//! The OpenAPI document served at `/openapi.json`, generated from the handlers'
//! annotations, so it cannot drift from the routes.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Converger",
        description = "Multi-tenant message routing hub: channels in, activities stored, streamed and delivered out. \
                       Success bodies are `{\"data\": ...}`; errors are `{\"error\": {\"code\", \"message\", \"details\"}}`."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "channels", description = "Where messages come from and go to"),
        (name = "conversations", description = "Ordered streams of activities"),
        (name = "activities", description = "Messages, events and typing signals"),
        (name = "routes", description = "Routing rules between channels"),
        (name = "deliveries", description = "Per-channel delivery status"),
        (name = "tokens", description = "Client tokens for one conversation"),
        (name = "operational events", description = "What happened to the tenant's deliveries and channels, and the ops webhook it is sent to"),
        (name = "inbound", description = "Messages from channels' external side, authenticated by signature"),
        (name = "realtime", description = "Phoenix Channels sockets for end users, over WebSocket or long-poll; the protocol is in docs/realtime.md"),
        (name = "operations", description = "Health and readiness"),
        (name = "admin", description = "Operator API under /admin/api: IP allow-list, and the admin password as a bearer token when one is set"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "Tenant API key (`cvg_...`); `Authorization: Bearer` works too",
            ))),
        );
        components.add_security_scheme(
            "channel_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-channel-token",
                "Channel token (JWT, typ=channel)",
            ))),
        );
        components.add_security_scheme(
            "client_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("Client token (JWT, typ=client), one conversation"))
                    .build(),
            ),
        );
    }
}

/// Adds to every operation the error answers that come from the layers around its
/// handler rather than from the handler itself, where its annotation does not list
/// them already: malformed ids (`400 invalid_id`) and `404` on paths with parameters,
/// malformed queries (`400 invalid_query`), bodies that are not JSON, too large or of
/// another media type (`400`, `413`, `415`) and fail validation (`422`), missing or
/// bad credentials (`401`), rate limits (`429`) and an unreachable database or a full
/// node (`503`). Liveness, readiness, metrics and the spec itself are left alone.
pub fn document_common_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{RefOr, ResponseBuilder};

    const PLAIN: &[&str] = &["/health", "/ready", "/metrics", "/openapi.json"];
    let error = || RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"));
    for (path, item) in doc.paths.paths.iter_mut() {
        if PLAIN.contains(&path.as_str()) {
            continue;
        }
        let path_params = path.contains('{');
        let operations = [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ];
        for op in operations.into_iter().flatten() {
            let has_query = op
                .parameters
                .iter()
                .flatten()
                .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Query));
            let has_body = op.request_body.is_some();
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty())
                || path.starts_with("/admin/api");
            let mut add = |status: &str, description: &str| {
                op.responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| {
                        ResponseBuilder::new()
                            .description(description)
                            .content(
                                "application/json",
                                utoipa::openapi::Content::new(Some(error())),
                            )
                            .into()
                    });
            };
            let mut bad_request = Vec::new();
            if path_params {
                bad_request.push("`invalid_id`: a path id is not a UUID");
            }
            if has_query {
                bad_request.push("`invalid_query`: a query parameter is malformed");
            }
            if has_body {
                bad_request
                    .push("`invalid_json`, `invalid_body`: the body is not the JSON expected");
            }
            if !bad_request.is_empty() {
                add("400", &bad_request.join("; "));
            }
            if secured {
                add(
                    "401",
                    "`unauthorized` (no credentials), `invalid_api_key`, `invalid_token`, `token_expired`",
                );
                add(
                    "403",
                    "`tenant_inactive`, `forbidden`: the credentials may not do this",
                );
            }
            if path_params {
                add("404", "`not_found`: no such resource for this tenant");
            }
            if has_body {
                add(
                    "413",
                    "`payload_too_large`: the body exceeds `CONVERGER_MAX_BODY_BYTES`",
                );
                add(
                    "415",
                    "`unsupported_media_type`: the body is not `application/json`",
                );
                add(
                    "422",
                    "`validation_failed`: `details.fields` names each bad field",
                );
            }
            add(
                "429",
                "`rate_limited`, `too_many_connections`, with `Retry-After`",
            );
            add(
                "503",
                "`store_unavailable`: the database is out of reach; `too_many_connections`: the node is full. Both with `Retry-After`",
            );
        }
    }
}
