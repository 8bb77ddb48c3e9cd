//! Shared helpers of the indexer's integration tests.

pub mod redis_cluster;
pub mod redis_server;
