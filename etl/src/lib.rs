//! fiber-etl: moves samples from the Redis stream into PostgreSQL/TimescaleDB, and owns the
//! database schema (`migrations/`, applied by [`migrate`]).

pub mod consumer;
pub mod maintenance;
pub mod metrics;
pub mod migrate;
pub mod writer;
