//! The OpenAPI 3 description of every route (`openapi.json`, hand-written next to the route
//! table in `mod.rs`; a test checks that the two list the same routes).

use super::auth::Principal;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;

pub const OPENAPI_JSON: &str = include_str!("openapi.json");

pub fn document() -> serde_json::Value {
    serde_json::from_str(OPENAPI_JSON).expect("openapi.json is valid JSON")
}

pub async fn handler(Extension(_p): Extension<Principal>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}
