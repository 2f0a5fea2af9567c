//! Tenants: the unit of isolation. Every other row belongs to exactly one.

use super::{FieldError, TenantId, Timestamp, check_no_nul, string_enum};

string_enum! {
    /// Whether a tenant's credentials are accepted.
    pub enum TenantStatus { Active => "active", Inactive => "inactive" }
}

/// A tenant as stored; the API key itself is never kept, only its hash.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub status: TenantStatus,
    /// The first characters of the API key, for recognising it in lists.
    pub api_key_prefix: String,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Longest tenant name, in characters.
pub const MAX_TENANT_NAME_CHARS: usize = 200;

/// The one rule for a tenant name, wherever it is entered (CLI, admin API, admin
/// form): trimmed, 1 to [`MAX_TENANT_NAME_CHARS`] characters, no U+0000. Returns the
/// trimmed name.
///
/// # Errors
///
/// A [`FieldError`] on `name` when the trimmed name is empty, too long or holds a NUL.
pub fn check_tenant_name(name: &str) -> Result<&str, FieldError> {
    let name = name.trim();
    check_no_nul("name", name)?;
    if name.is_empty() || name.chars().count() > MAX_TENANT_NAME_CHARS {
        return Err(FieldError::new(
            "name",
            format!("must be 1 to {MAX_TENANT_NAME_CHARS} characters"),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_name_is_trimmed_and_1_to_200_characters() {
        assert_eq!(check_tenant_name("  Acme \n"), Ok("Acme"));
        let longest = "é".repeat(MAX_TENANT_NAME_CHARS);
        assert_eq!(check_tenant_name(&longest), Ok(longest.as_str()));
        for bad in ["", "   ", &"x".repeat(MAX_TENANT_NAME_CHARS + 1)] {
            let err = check_tenant_name(bad).unwrap_err();
            assert_eq!(err.field, "name");
            assert_eq!(err.message, "must be 1 to 200 characters");
        }
        assert_eq!(check_tenant_name("Ac\0me").unwrap_err().field, "name");
    }
}
