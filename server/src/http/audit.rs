//! Audit endpoints: list, CSV export, verify.

use app::error::AppError;

use super::error::ApiError;

pub async fn list() -> ApiError {
    ApiError(AppError::new(501, "not_implemented", "not implemented yet"))
}

pub async fn export_csv() -> ApiError {
    ApiError(AppError::new(501, "not_implemented", "not implemented yet"))
}

pub async fn verify() -> ApiError {
    ApiError(AppError::new(501, "not_implemented", "not implemented yet"))
}
