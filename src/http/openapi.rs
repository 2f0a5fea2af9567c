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
