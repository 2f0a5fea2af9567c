//! Tenants: the list, creating one (its key shown once), enabling or disabling one and
//! rotating its key, through [`crate::operations::tenants`].

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;

use super::{Chrome, Notice, form_status, go};
use crate::admin::forms::CsrfForm;
use crate::admin::guard::AdminContext;
use crate::domain::{FieldError, Tenant, TenantId};
use crate::http::error::ApiResult;
use crate::http::extract::ApiPath;
use crate::http::state::AppState;
use crate::operations::{OpError, tenants};

#[derive(Template, WebTemplate)]
#[template(path = "tenants.html")]
pub struct TenantsPage {
    chrome: Chrome,
    tenants: Vec<Tenant>,
    /// A key to show once: (tenant name, key).
    new_key: Option<(String, String)>,
    error: Option<String>,
}

async fn tenants_page(
    state: &AppState,
    chrome: Chrome,
    new_key: Option<(String, String)>,
    error: Option<String>,
) -> ApiResult<TenantsPage> {
    Ok(TenantsPage {
        chrome,
        tenants: state.store.list_tenants().await?,
        new_key,
        error,
    })
}

/// The broken rules as sentences: `The name must be 1 to 200 characters.`
fn sentences(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("The {} {}.", e.field, e.message))
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn tenants(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    Query(q): Query<Notice>,
) -> ApiResult<TenantsPage> {
    tenants_page(&state, Chrome::new(&ctx, "tenants", q.notice), None, None).await
}

pub async fn create_tenant(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    form: CsrfForm,
) -> ApiResult<TenantsPage> {
    let chrome = Chrome::new(&ctx, "tenants", None);
    match tenants::create(&state.store, form.get("name").unwrap_or_default()).await {
        Ok(created) => {
            let new_key = (created.tenant.name, created.api_key);
            tenants_page(&state, chrome, Some(new_key), None).await
        }
        Err(OpError::Invalid(errors)) => {
            tenants_page(&state, chrome, None, Some(sentences(&errors))).await
        }
        Err(OpError::TenantExists(name)) => {
            let error = format!(
                "A tenant called {name} exists already (names are compared without case): \
                 choose another name."
            );
            tenants_page(&state, chrome, None, Some(error)).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn set_tenant_status(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<TenantId>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let tenant = tenants::set_status(&state.store, id, form_status(&form)?).await?;
    Ok(go(
        "/admin/tenants",
        &format!("Tenant {} is {}.", tenant.name, tenant.status),
    ))
}

pub async fn rotate_tenant_key(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    ApiPath(id): ApiPath<TenantId>,
    _form: CsrfForm,
) -> ApiResult<TenantsPage> {
    let rotated = tenants::rotate_key(&state.store, id).await?;
    tenants_page(
        &state,
        Chrome::new(&ctx, "tenants", None),
        Some((rotated.tenant.name, rotated.api_key)),
        None,
    )
    .await
}
