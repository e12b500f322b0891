//! The ETL's database writer alone, against the PostgreSQL of `make env-up`: the same rows
//! written into an empty, migrated database by the path the ETL takes (binary `COPY`) and by
//! its conflict-tolerant fallback (`INSERT … SELECT FROM UNNEST … ON CONFLICT DO NOTHING`),
//! 20 batches per transaction as the ETL writes them. DESIGN.md §3 asks what the conflict
//! tolerance costs; this prints it. Prints figures; never fails on time.
//!
//!   cargo bench -p fiber-etl --bench writer
//!   FIBER_WRITER_ROWS=500000 FIBER_LOAD_BATCH=500 cargo bench -p fiber-etl --bench writer
//!
//! The whole data path (HTTP, ingest, stream, ETL) is measured by `make bench`
//! (e2e/benches/load.rs).

use std::time::Instant;

use anyhow::Result;
use chrono::Utc;
use fiberstack_e2e::LocalEnv;
use fiberstack_e2e::bench::{batch, setting};
use fiberstack_model::Batch;
use fiberstack_plumbing::postgres::DbConfig;

#[tokio::main]
async fn main() -> Result<()> {
    let rows = setting("FIBER_WRITER_ROWS", 500_000) as usize;
    let size = setting("FIBER_LOAD_BATCH", 500) as usize;
    let nodes = 20;
    let env = LocalEnv::load()?;
    let base = Utc::now() - chrono::Duration::hours(1);
    let batches: Vec<Batch> = (0..rows.div_ceil(size))
        .map(|s| batch(s % nodes, (s / nodes) as u64, size, base))
        .collect();
    let samples = batches.len() * size;
    println!(
        "writer: {samples} samples in batches of {size}, 20 batches per transaction, PostgreSQL 15"
    );
    let mut rates = Vec::new();
    for conflict_tolerant in [false, true] {
        let url = env.fresh_postgres_database("fs_writer_bench").await?;
        let pool = DbConfig::new(&url).connect().await?;
        fiber_etl::migrate::migrate(&pool).await?;
        let start = Instant::now();
        for chunk in batches.chunks(20) {
            if conflict_tolerant {
                fiber_etl::writer::write_conflict_tolerant(&pool, chunk, Utc::now()).await?;
            } else {
                fiber_etl::writer::write(&pool, chunk, Utc::now()).await?;
            }
        }
        rates.push(samples as f64 / start.elapsed().as_secs_f64());
        pool.close().await;
    }
    let (copy, unnest) = (rates[0], rates[1]);
    println!("binary COPY:     {copy:.0} samples/s (the ETL's path)");
    println!(
        "UNNEST:          {unnest:.0} samples/s (INSERT … ON CONFLICT DO NOTHING, the fallback)"
    );
    println!("UNNEST / COPY:   {:.2}", unnest / copy);
    Ok(())
}
