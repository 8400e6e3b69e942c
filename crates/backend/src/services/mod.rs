//! The backend's services: domain logic between the HTTP layer and the store. Services know
//! nothing of status codes; they return domain errors the API layer maps.

pub mod agent_download;
pub mod auth;
pub mod certs;
pub mod cloud_client;
pub mod commands;
pub mod deployments;
pub mod events;
pub mod health;
pub mod local_machines;
pub mod runs;
pub mod terraform;
