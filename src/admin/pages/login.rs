//! The login form (with an admin password set) and logout.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};

use super::Chrome;
use crate::admin::forms::CsrfForm;
use crate::admin::guard::{AdminContext, COOKIE};
use crate::http::state::AppState;

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
pub struct LoginPage {
    chrome: Chrome,
    failed: bool,
}

pub async fn login_form(Extension(ctx): Extension<AdminContext>) -> LoginPage {
    LoginPage {
        chrome: Chrome::new(&ctx, "login", None),
        failed: false,
    }
}

pub async fn login(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    form: CsrfForm,
) -> Response {
    if state
        .admin
        .password_matches(form.get("password").unwrap_or_default())
    {
        // A new session id on login: a planted cookie cannot be promoted.
        let session = state
            .admin
            .new_session(true, chrono::Utc::now().timestamp());
        let mut response = Redirect::to("/admin").into_response();
        response
            .headers_mut()
            .insert(header::SET_COOKIE, state.admin.set_cookie(&session));
        return response;
    }
    tracing::warn!(client = %ctx.client, "admin login failed");
    state
        .limits
        .admin_passwords
        .record_failure(ctx.client, std::time::Instant::now());
    LoginPage {
        chrome: Chrome::new(&ctx, "login", None),
        failed: true,
    }
    .into_response()
}

/// Ends the session on every node (its id is revoked until the cookie would expire)
/// and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    _form: CsrfForm,
) -> Response {
    if ctx.session.authenticated {
        let now = chrono::Utc::now().timestamp();
        if let Err(e) = state
            .store
            .revoke_admin_session(&ctx.session.sid, ctx.session.expires, now)
            .await
        {
            return crate::http::error::ApiError::from(e).into_response();
        }
        tracing::info!(client = %ctx.client, "admin logged out");
    }
    let mut response = Redirect::to("/admin/login").into_response();
    if let Ok(v) = format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0").parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}
