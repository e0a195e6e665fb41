//! The one rule for names that also appear in URLs and policy input.

use app::error::AppError;

/// A name that also appears in URLs and policy input (secrets, policies, connections,
/// query parameters): 1 to 64 of `A-Z a-z 0-9 _ - .`, trimmed.
pub fn identifier(value: &str, what: &str) -> Result<String, AppError> {
    let value = value.trim();
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return Err(AppError::validation(format!("{what} must be 1 to 64 of A-Z a-z 0-9 _ - .")));
    }
    Ok(value.to_owned())
}
