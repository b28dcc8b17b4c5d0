pub mod cel;
pub mod decision;
pub mod engine;
pub mod identity;
pub mod policy;
pub mod request_json;
pub mod server;
pub mod suite;
