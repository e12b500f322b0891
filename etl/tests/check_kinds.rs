//! The database's list of check kinds is the model's: the `metrics.kind` constraint accepts
//! exactly [`CheckKind::ALL`]. A new kind fails here until its migration widens the
//! constraint.

use anyhow::Result;
use fiberstack_e2e::LocalEnv;
use fiberstack_model::CheckKind;
use sqlx::PgPool;

#[tokio::test]
async fn the_kind_constraint_accepts_exactly_the_models_kinds() -> Result<()> {
    let url = LocalEnv::load()?
        .fresh_postgres_database("fs_kinds")
        .await?;
    let pool = PgPool::connect(&url).await?;
    fiber_etl::migrate::migrate(&pool).await?;
    let definitions: Vec<String> = sqlx::query_scalar(
        "select pg_get_constraintdef(oid) from pg_constraint
          where conrelid = 'metrics'::regclass and contype = 'c'
            and pg_get_constraintdef(oid) like '%kind%'",
    )
    .fetch_all(&pool)
    .await?;
    let [definition] = definitions.as_slice() else {
        panic!("one check constraint on metrics.kind: {definitions:?}");
    };
    // e.g. CHECK ((kind = ANY (ARRAY['icmp'::text, 'tcp'::text, ...])))
    let mut allowed: Vec<&str> = definition.split('\'').skip(1).step_by(2).collect();
    allowed.sort();
    let mut model: Vec<&str> = CheckKind::ALL.iter().map(|k| k.as_str()).collect();
    model.sort();
    assert_eq!(allowed, model, "{definition}");

    // And the constraint really refuses what is not a kind.
    let refused = sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, up)
         values (now(), 'n', 'ns/p', 'r', 't', 'smtp', true)",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("check constraint"),
        "{refused}"
    );
    Ok(())
}
